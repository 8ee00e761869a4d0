// ES module victim: builtins imported by name before any attach. Prints "ready <port>".
// GET /read?path=P reads P through the named import of fs/promises.
import http from 'node:http';
import { readFile } from 'node:fs/promises';

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  try {
    res.end(await readFile(url.searchParams.get('path'), 'utf8'));
  } catch (err) {
    res.writeHead(500).end(`error: ${err.message}`);
  }
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`ready ${server.address().port}\n`));
