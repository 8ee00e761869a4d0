'use strict';
// SDK start: `node -r /path/rasp/nodejs/register.js app.js` (or NODE_OPTIONS=--require=...),
// with RAMPART_SOCKET naming the agent socket (default /run/rampart/probe.sock).
require('./probe').start({ socket: process.env.RAMPART_SOCKET, mode: 'sdk' });
