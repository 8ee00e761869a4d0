'use strict';
// net.Socket.prototype.connect: every TCP and IPC client connection made through net (also
// http, https, tls and fetch/undici sockets). Keep-alive agents reuse a socket, so one connect
// may carry many requests: the http.request and fetch hooks see each request.

const net = require('net');

function target(args) {
  let a0 = args[0];
  // net.connect()/createConnection() pass their normalised arguments as one array
  if (Array.isArray(a0)) a0 = a0[0];
  if (a0 && typeof a0 === 'object') {
    if (a0.path) return [String(a0.path)];
    return [`${a0.host || 'localhost'}:${a0.port}`];
  }
  if (typeof a0 === 'string' && !/^\d+$/.test(a0)) return [a0]; // a path
  const host = typeof args[1] === 'string' ? args[1] : 'localhost';
  return [`${host}:${a0}`];
}

function install(kit) {
  // blocking: the socket is destroyed with the error on the next tick, so the caller's
  // 'error' listener (or the http request's) gets it, as for a refused connection
  kit.wrap(net.Socket.prototype, 'connect', 'net.Socket.connect', 'network', (...args) => target(args),
    (err, sock) => {
      process.nextTick(() => sock.destroy(err));
      return sock;
    });
}

module.exports = { family: 'net', install };
