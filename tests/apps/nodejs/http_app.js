'use strict';
// Plain `http` victim app: GET /<sink>?<params> (see sinks.js). Prints "ready <port>".
const http = require('http');
const { SINKS } = require('./sinks');

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const sink = SINKS[url.pathname.slice(1)];
  if (!sink) {
    res.writeHead(404).end('no such sink');
    return;
  }
  sink(Object.fromEntries(url.searchParams)).then(
    (out) => res.writeHead(200).end(String(out)),
    (err) => res.writeHead(500).end(`error: ${err.message}`),
  );
});
server.keepAliveTimeout = 1000;
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
