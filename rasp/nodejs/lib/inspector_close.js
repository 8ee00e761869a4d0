'use strict';
// Closing the inspector that rasp-attach opened, without crashing the process.
// Node 20 can die with SIGSEGV when inspector.close() runs while a DevTools session is still
// connected (the family of nodejs/node#18761): with close() on a setTimeout(0) right after
// the evaluate, about 1 attach in 12 killed the target here. So we wait until no connection
// to the inspector port is open any more (the attacher hangs up as soon as it has the
// evaluate's reply), then close. Bounded: past CLOSE_ANYWAY_MS we close regardless, since an
// inspector left open is remote code execution for anyone who reaches the port.

const fs = require('fs');
const inspector = require('inspector');

const POLL_MS = 5;
const CLOSE_ANYWAY_MS = 700;
const ESTABLISHED = '01';
const CLOSE_WAIT = '08'; // the client hung up, node has not processed it yet

// the unhooked readFileSync: these reads are the probe's, not the app's
const readFileSync = fs.readFileSync[Symbol.for('rampart.nodejs.original')] || fs.readFileSync;

function portOf(url) {
  const m = /:(\d+)\//.exec(url || '');
  return m ? Number(m[1]) : 0;
}

/** Is any TCP connection to our inspector port still open (as seen from this netns)? */
function sessionsOpen(port) {
  for (const file of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let text;
    try {
      text = readFileSync(file, 'latin1');
    } catch (e) {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 4) continue;
      const local = c[1].split(':');
      if (parseInt(local[local.length - 1], 16) === port && (c[3] === ESTABLISHED
        || c[3] === CLOSE_WAIT)) return true;
    }
  }
  return false;
}

/** Close the inspector once its sessions are gone (or after CLOSE_ANYWAY_MS). */
function closeWhenIdle() {
  const port = portOf(inspector.url());
  if (!port) return;
  const start = Date.now();
  const tick = () => {
    if (!inspector.url()) return; // closed already
    if (sessionsOpen(port) && Date.now() - start < CLOSE_ANYWAY_MS) {
      setTimeout(tick, POLL_MS);
      return;
    }
    inspector.close();
  };
  setTimeout(tick, POLL_MS);
}

module.exports = { closeWhenIdle, sessionsOpen, portOf };
