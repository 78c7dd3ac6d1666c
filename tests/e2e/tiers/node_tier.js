// Middle tier in Node: `http` server, outbound calls through one
// http.Agent({keepAlive: true}) (the normal pooled keep-alive client).
//
//   node node_tier.js IP PORT TO MODE POD
//
// Same contract as go_tier.go: GET /healthz -> "ok"; GET / -> GET http://TO/ (MODE "fwd":
// forwarding the incoming X-Virtual-Env header, "plain": not) and answers
// {"tier", "got_header", "backend", "backend_got_header"} (502 + "error" on failure).
'use strict';
const http = require('http');

const [ip, port, to, mode, pod] = process.argv.slice(2);
if (!pod) {
  console.error('usage: node node_tier.js IP PORT TO fwd|plain POD');
  process.exit(2);
}
const [toHost, toPort] = [to.slice(0, to.lastIndexOf(':')), Number(to.slice(to.lastIndexOf(':') + 1))];
const agent = new http.Agent({keepAlive: true});

http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.end('ok\n');
    return;
  }
  const inEnv = req.headers['x-virtual-env'];
  const out = {tier: pod, got_header: inEnv === undefined ? null : inEnv};
  let done = false;
  const reply = (code) => {
    if (done) return;
    done = true;
    const b = JSON.stringify(out) + '\n';
    res.writeHead(code, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b)});
    res.end(b);
  };
  req.resume();  // drain any request body
  const headers = {};
  if (mode === 'fwd' && inEnv !== undefined) headers['X-Virtual-Env'] = inEnv;
  const creq = http.get({host: toHost, port: toPort, path: '/', agent, headers}, (cres) => {
    let b = '';
    cres.setEncoding('utf8');
    cres.on('data', (d) => { b += d; });
    cres.on('end', () => {
      try {
        const j = JSON.parse(b);
        out.backend = j.pod;
        out.backend_got_header = j.got_header;
        reply(200);
      } catch (e) {
        out.error = 'bad answer: ' + String(e);
        reply(502);
      }
    });
    cres.on('error', (e) => { out.error = String(e); reply(502); });
  });
  creq.setTimeout(5000, () => creq.destroy(new Error('timeout')));
  creq.on('error', (e) => { out.error = String(e); reply(502); });
}).listen(Number(port), ip);

process.on('SIGTERM', () => process.exit(0));
