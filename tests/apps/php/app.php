<?php
// Vulnerable test app: every endpoint passes request input straight to one sink.
// Served by `php -S 127.0.0.1:PORT app.php` (as the router script) and by php-fpm
// (SCRIPT_FILENAME=app.php, ?op=NAME). Each endpoint prints the sink's result; a Throwable
// (a blocked call) prints "error: <class>: <message>" with status 500.

$op = $_GET['op'] ?? trim(parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH), '/');
$a = $_GET['a'] ?? '';
$b = $_GET['b'] ?? '';

function out($v) { echo is_string($v) ? $v : var_export($v, true); }

try {
    switch ($op) {
        case 'ok': out('ok'); break;
        case 'system': system($a); break;
        case 'exec': exec($a, $lines); out(implode("\n", $lines)); break;
        case 'passthru': passthru($a); break;
        case 'shell_exec': out(shell_exec($a)); break;
        case 'popen': $p = popen($a, 'r'); out(stream_get_contents($p)); pclose($p); break;
        case 'proc_open':
            $p = proc_open($a, [1 => ['pipe', 'w']], $pipes);
            out(stream_get_contents($pipes[1])); proc_close($p); break;
        case 'read': out(file_get_contents($a)); break;
        case 'write': out(file_put_contents($a, $b)); break;
        case 'fopen': $f = fopen($a, 'r'); out(fgets($f)); fclose($f); break;
        case 'readfile': readfile($a); break;
        case 'file': out(implode('', file($a))); break;
        case 'unlink': out(unlink($a)); break;
        case 'rename': out(rename($a, $b)); break;
        case 'copy': out(copy($a, $b)); break;
        case 'scandir': out(implode(',', scandir($a))); break;
        case 'opendir': $d = opendir($a); out(readdir($d)); closedir($d); break;
        case 'eval': out(eval($a)); break;
        case 'include': out(include $a); break;
        case 'curl':
            $c = curl_init($a); curl_setopt($c, CURLOPT_RETURNTRANSFER, true);
            out(curl_exec($c)); break;
        case 'curl_setopt': // the URL set after curl_init, as most code does
            $c = curl_init(); curl_setopt($c, CURLOPT_URL, 'http://127.0.0.1:9/unused');
            curl_setopt_array($c, [CURLOPT_URL => $a, CURLOPT_RETURNTRANSFER => true]);
            out(curl_exec($c)); break;
        case 'fsockopen': $s = fsockopen($a, (int)$b, $errno, $errstr, 2); out($s ? 'connected' : $errstr); break;
        case 'stream_socket_client':
            $s = stream_socket_client($a, $errno, $errstr, 2); out($s ? 'connected' : $errstr); break;
        case 'sqlite':
            $db = new SQLite3(':memory:'); $db->exec('CREATE TABLE t (name TEXT)');
            $db->exec("INSERT INTO t VALUES ('alice')");
            $r = $db->query("SELECT name FROM t WHERE name = '$a'");
            $row = $r->fetchArray(); out($row ? $row[0] : 'none'); break;
        case 'pdo':
            $db = new PDO('sqlite::memory:'); $db->exec('CREATE TABLE t (name TEXT)');
            $st = $db->prepare('INSERT INTO t VALUES (?)'); $st->execute(['alice']);
            $row = $db->query("SELECT name FROM t WHERE name = '$a'")->fetch();
            out($row ? $row[0] : 'none'); break;
        case 'unserialize': out(unserialize($a)); break;
        case 'putenv': out(putenv($a)); break;
        case 'pid': out((string)getmypid()); break;
        default: http_response_code(404); out("no such op: $op");
    }
} catch (Throwable $e) {
    http_response_code(500);
    echo 'error: ', get_class($e), ': ', $e->getMessage();
}
