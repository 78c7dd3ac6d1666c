// Middle tier in Go: net/http server, outbound calls with the default pooled keep-alive
// Transport (http.DefaultTransport). Standard library only.
//
//	go_tier IP PORT TO MODE POD
//
// GET /healthz -> "ok". GET / -> GET http://TO/ (MODE "fwd": with the incoming X-Virtual-Env
// header, when present; MODE "plain": without it) and answers
// {"tier": POD, "got_header": <incoming header or null>, "backend": <pod TO reported>,
//  "backend_got_header": <header TO received>} (502 and "error" when the call failed).
package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 6 {
		os.Stderr.WriteString("usage: go_tier IP PORT TO fwd|plain POD\n")
		os.Exit(2)
	}
	ip, port, to, mode, pod := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	client := &http.Client{} // Transport nil: http.DefaultTransport, the normal pool
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		out := map[string]interface{}{"tier": pod, "got_header": nil}
		vals, has := r.Header["X-Virtual-Env"]
		if has {
			out["got_header"] = vals[0]
		}
		reply := func(code int) {
			b, _ := json.Marshal(out)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			w.Write(append(b, '\n'))
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+to+"/", nil)
		if mode == "fwd" && has {
			req.Header.Set("X-Virtual-Env", vals[0])
		}
		resp, err := client.Do(req)
		if err != nil {
			out["error"] = err.Error()
			reply(502)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		var ans map[string]interface{}
		if err == nil {
			err = json.Unmarshal(body, &ans)
		}
		if err != nil {
			out["error"] = "bad answer: " + err.Error()
			reply(502)
			return
		}
		out["backend"] = ans["pod"]
		out["backend_got_header"] = ans["got_header"]
		reply(200)
	})
	srv := &http.Server{Addr: net.JoinHostPort(ip, port), Handler: mux,
		ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
