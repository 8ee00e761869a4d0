'use strict';
// dns.lookup (getaddrinfo: what net uses for host names) and the resolver functions
// (c-ares), callback and promise flavours.

const dns = require('dns');

const RESOLVE = ['resolve', 'resolve4', 'resolve6', 'resolveAny', 'resolveCname', 'resolveMx',
  'resolveNs', 'resolveTxt', 'resolveSrv', 'resolvePtr', 'resolveSoa', 'resolveNaptr',
  'resolveCaa', 'reverse'];

const hostArgs = (host, rrtype) => (typeof rrtype === 'string' ? [host, rrtype] : [host]);

function install(kit) {
  // blocking: callback APIs get the error in their callback, promise APIs reject
  for (const fn of ['lookup', ...RESOLVE]) {
    kit.wrap(dns, fn, `dns.${fn}`, 'dns', hostArgs, 'callback');
    kit.wrap(dns.promises, fn, `dns.promises.${fn}`, 'dns', hostArgs, 'promise');
  }
}

module.exports = { family: 'dns', install };
