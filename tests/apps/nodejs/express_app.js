'use strict';
// Express victim app: the same sinks as http_app.js, as Express routes. Prints "ready <port>".
const express = require('express');
const { SINKS } = require('./sinks');

const app = express();
app.use(express.urlencoded({ extended: false }));
for (const [name, sink] of Object.entries(SINKS)) {
  app.all(`/${name}`, (req, res, next) => {
    sink({ ...req.query, ...req.body }).then((out) => res.send(String(out)), next);
  });
}
// the app's error path
app.use((err, req, res, next) => res.status(500).send(`error: ${err.message}`));
const server = app.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
server.keepAliveTimeout = 1000;
