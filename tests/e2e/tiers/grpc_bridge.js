// HTTP -> gRPC bridge in Node (@grpc/grpc-js). It opens ONE long-lived gRPC channel to TO
// on its first request (so the channel's connection is made while that request is being
// served), and uses it for every later request.
//
//   NODE_PATH=<dir with @grpc/grpc-js> node grpc_bridge.js IP PORT TO MODE POD
//
// GET /healthz -> "ok". GET / -> unary call /envsteer.Who/Get on the channel (MODE "fwd":
// with the incoming X-Virtual-Env header as x-virtual-env metadata; "plain": without) and
// answers {"tier": POD, "got_header", "backend": <pod the gRPC server reported>,
// "backend_got_header", "opened_by": <env header of the request that opened the channel>}.
'use strict';
const http = require('http');
const grpc = require('@grpc/grpc-js');

const [ip, port, to, mode, pod] = process.argv.slice(2);
if (!pod) {
  console.error('usage: node grpc_bridge.js IP PORT TO fwd|plain POD');
  process.exit(2);
}
let client = null;
let openedBy;
const ident = (b) => b;

http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.end('ok\n');
    return;
  }
  req.resume();
  const inEnv = req.headers['x-virtual-env'];
  if (client === null) {
    client = new grpc.Client(to, grpc.credentials.createInsecure());
    openedBy = inEnv === undefined ? null : inEnv;
  }
  const out = {tier: pod, got_header: inEnv === undefined ? null : inEnv, opened_by: openedBy};
  const reply = (code) => {
    const b = JSON.stringify(out) + '\n';
    res.writeHead(code, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b)});
    res.end(b);
  };
  const md = new grpc.Metadata();
  if (mode === 'fwd' && inEnv !== undefined) md.set('x-virtual-env', inEnv);
  client.makeUnaryRequest('/envsteer.Who/Get', ident, ident, Buffer.alloc(0), md,
    {deadline: Date.now() + 5000}, (err, resp) => {
      if (err) {
        out.error = String(err);
        reply(502);
        return;
      }
      try {
        const j = JSON.parse(resp.toString('utf8'));
        out.backend = j.pod;
        out.backend_got_header = j.got_header;
        reply(200);
      } catch (e) {
        out.error = 'bad answer: ' + String(e);
        reply(502);
      }
    });
}).listen(Number(port), ip);

process.on('SIGTERM', () => process.exit(0));
