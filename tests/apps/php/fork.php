<?php
// A PHP CLI victim for pcntl_fork under the probe: waits for "go" on stdin, then forks N
// children one after another while the parent keeps calling a hooked sink (so the probe's JS
// is busy when a fork happens). Each child calls a hooked sink and exits 0. A child that does
// not exit within 10 s is reported as "hung PID" and killed. Prints "forked N ok M", then
// "parent ok" after one more hooked call of its own.
$n = (int)($argv[1] ?? 20);
echo "ready\n";
fgets(STDIN);
$ok = 0;
for ($i = 0; $i < $n; $i++) {
    file_get_contents('/etc/hostname');
    $pid = pcntl_fork();
    if ($pid === 0) {
        $s = file_get_contents('/etc/hostname');
        exit($s === false ? 3 : 0);
    }
    $deadline = microtime(true) + 10;
    while (true) {
        $r = pcntl_waitpid($pid, $status, WNOHANG);
        if ($r === $pid) { if (pcntl_wexitstatus($status) === 0) $ok++; break; }
        if (microtime(true) > $deadline) { echo "hung $pid\n"; posix_kill($pid, 9); pcntl_waitpid($pid, $status); break; }
        usleep(1000);
    }
}
echo "forked $n ok $ok\n";
file_get_contents('/etc/os-release');
echo "parent ok\n";
fgets(STDIN);
