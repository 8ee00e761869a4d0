<?php
// A PHP CLI victim for bench/php_hook_cost.py: for each line "N" on stdin, calls a hooked sink
// (file_get_contents of /etc/hostname) N times from a user function and prints the
// nanoseconds per call.
echo "ready\n";
function work(int $n): void {
    for ($i = 0; $i < $n; $i++) {
        file_get_contents('/etc/hostname');
    }
}
while (($line = fgets(STDIN)) !== false) {
    $n = max((int)$line, 1);
    $t = hrtime(true);
    work($n);
    echo intdiv(hrtime(true) - $t, $n), "\n";
}
