'use strict';
// Closing the inspector that rasp-attach opened, without crashing the process.
// Node 20 can die with SIGSEGV when inspector.close() runs while a DevTools session is still
// connected (the family of nodejs/node#18761): with close() on a setTimeout(0) right after
// the evaluate, 2 attaches in 30 killed the target here. So we wait until the attacher's
// session is gone (it hangs up as soon as it has the evaluate's reply), then close.
// How we know: the attacher tells us the fd and socket inode of its session inside this
// process, and one readlink of /proc/self/fd/<fd> per poll says whether it is still open.
// Without that (an older attacher), we scan /proc/self/net/tcp for connections to the
// inspector port; that read costs ~50 ms of this thread on a host with 16k sockets, so it is
// polled sparingly. Bounded: past CLOSE_ANYWAY_MS we close regardless, since an inspector
// left open is remote code execution for anyone who reaches the port.

const fs = require('fs');
const inspector = require('inspector');

const POLL_MS = 5;
const CLOSE_ANYWAY_MS = 700;
const ESTABLISHED = '01';
const CLOSE_WAIT = '08'; // the client hung up, node has not processed it yet

// the unhooked readFileSync: these reads are the probe's, not the app's
const ORIGINAL = Symbol.for('rampart.nodejs.original');
const readFileSync = fs.readFileSync[ORIGINAL] || fs.readFileSync;
const SCAN_POLL_MS = 50;

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

/** Is the socket `inode` still open as our fd `fd`? */
function fdOpen(fd, inode) {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`) === `socket:[${inode}]`;
  } catch (e) {
    return false;
  }
}

/**
 * Close the inspector once the attacher's session is gone (or after CLOSE_ANYWAY_MS).
 * @param {{fd: number, inode: number}} [session] the session's socket in this process
 */
function closeWhenIdle(session) {
  const port = portOf(inspector.url());
  if (!port) return;
  const known = session && Number.isInteger(session.fd) && Number.isInteger(session.inode);
  const open = known ? () => fdOpen(session.fd, session.inode) : () => sessionsOpen(port);
  const poll = known ? POLL_MS : SCAN_POLL_MS;
  const start = Date.now();
  const tick = () => {
    if (!inspector.url()) return; // closed already
    if (open() && Date.now() - start < CLOSE_ANYWAY_MS) {
      setTimeout(tick, poll);
      return;
    }
    inspector.close();
  };
  setTimeout(tick, POLL_MS);
}

module.exports = { closeWhenIdle, sessionsOpen, portOf };
