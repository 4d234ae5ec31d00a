// The peer of the live fan-out benchmark: the usual Node broadcast server on
// the `ws` package. POST /publish sends one --size byte text message, carrying
// the server's CLOCK_MONOTONIC time of the publish, to every connected client
// with the broadcast loop from the ws README (client.send per client).
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const size = Number(process.argv[2] || 200);
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    req.resume();
    req.on('end', () => {
      const t = process.hrtime.bigint();
      let msg = JSON.stringify({ type: 'event', channel: 'bench/bench', seq: 1, event: 'bench', data: { t: Number(t), pad: '' } });
      msg = JSON.stringify({ type: 'event', channel: 'bench/bench', seq: 1, event: 'bench', data: { t: Number(t), pad: 'x'.repeat(Math.max(0, size - msg.length)) } });
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(msg);
      }
      res.writeHead(200, { 'content-length': 2 });
      res.end('ok');
    });
    return;
  }
  if (req.method === 'POST' && req.url === '/publish-quiet') {
    // A publish on a thread nobody reads: a broadcast loop over no clients.
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-length': 2 });
      res.end('ok');
    });
    return;
  }
  res.writeHead(404);
  res.end();
});
// The publisher keeps one connection for the whole run (as fastedge's
// 60 s idle timeout allows); Node closes idle keep-alive ones after 5 s.
server.keepAliveTimeout = 600000;
server.headersTimeout = 601000;
server.requestTimeout = 0;
const wss = new WebSocketServer({ server, perMessageDeflate: false });
server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => {
  console.log(JSON.stringify({ port: server.address().port, pid: process.pid }));
});
