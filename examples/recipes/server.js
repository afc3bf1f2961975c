// A Node.js HTTP server for the supervise recipe (docs/recipes.md).
//
//     node server.js            under supervise: serves on the daemon's socket (fd 3)
//     PORT=8000 node server.js  standalone
//
// GET / answers with the process's pid and instance name as JSON.
'use strict';

const http = require('node:http');

// How long a stopping server keeps its idle kept-alive connections open: a client
// may be sending its next request on one right now. Each request answered meanwhile
// gets "Connection: close", so busy clients leave on their own (RFC 9112 9.6).
const STOP_LINGER_MS = 1000;

let stopping = false;

const server = http.createServer((req, res) => {
  const body = JSON.stringify({
    pid: process.pid,
    instance: process.env.SUPERVISE_NAME || 'standalone',
    path: req.url,
  }) + '\n';
  if (stopping) res.setHeader('Connection', 'close');
  res.writeHead(200, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body)});
  res.end(body);
});
server.keepAliveTimeout = 5000;

// supervise passes its listen sockets as fds 3, 4, ... (systemd's LISTEN_FDS protocol).
// LISTEN_PID says whom they are for: not a child that inherited the variables.
if (process.env.LISTEN_PID === String(process.pid) && Number(process.env.LISTEN_FDS) >= 1) {
  // backlog: Node calls listen() again on the fd, which sets the shared socket's accept
  // queue for every instance: keep it as long as the daemon's (its `backlog`, 1024 by default).
  server.listen({fd: 3, backlog: 1024});
} else {
  server.listen(Number(process.env.PORT || 8000), '127.0.0.1');
}

process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  // Stop accepting (the other instances take the new connections) and exit once every
  // connection is gone. Since Node 19, close() also closes the connections idle at this
  // very moment: a request a client has just sent on one is lost. So close() is called
  // with closeIdleConnections() held back, and idle connections are closed after the
  // linger instead, when a busy client has had its "Connection: close".
  const closeIdle = server.closeIdleConnections;
  server.closeIdleConnections = () => {};
  server.close(() => process.exit(0));
  server.closeIdleConnections = closeIdle;
  setTimeout(() => server.closeIdleConnections(), STOP_LINGER_MS).unref();
});
