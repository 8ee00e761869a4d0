<?php
// A PHP CLI victim for the probe's argument and stack readers: waits for "go" on stdin, then
// calls hooked sinks with awkward arguments (bytes that are not UTF-8, JSON's special
// characters, a string over the 4 KiB cap, integers, a double, an array, a reference), from a
// method, an include and an eval; then prints "done" and waits for EOF.
class Reader {
    public static function read(string $path) { return @file_get_contents($path); }
}

function calls() {
    Reader::read("/nonexistent/\xff\xfe \"quoted\" back\\slash \x01\t\n é ✓ \xed\xa0\x80 \xf0\x9f\x98\x80");
    Reader::read(str_repeat('a', 5000));
    exec('true', $out, $rc);                         // a string and two references
    try { file('/nonexistent', -5); } catch (Throwable $e) {}  // a negative integer
    @fopen('/nonexistent', 'r', 1.5);                // a double
    unserialize('i:7;', ['allowed_classes' => ['A', 'B']]);  // an array
    include __DIR__ . '/included.php';
    eval('return 1;');
}

echo "ready\n";
fgets(STDIN);
calls();
echo "done\n";
fgets(STDIN);
