<?php
// A PHP CLI victim for pcntl_fork under the probe: waits for "go" on stdin, then forks N
// children, up to B alive at once, while the parent keeps calling a hooked sink (so the
// probe's JS and Frida's thread are busy when a fork happens). Each child calls hooked sinks
// and exits 0. A child that does not exit within T seconds is reported as "hung PID" and
// killed. Prints "forked N ok M", then for each line on stdin one more hooked call of its own
// and "parent ok".
// Usage: php fork.php [N=20] [B=1] [T=10]
$n = (int)($argv[1] ?? 20);
$batch = max(1, (int)($argv[2] ?? 1));
$timeout = (float)($argv[3] ?? 10);
echo "ready\n";
fgets(STDIN);
$busy = '/nonexistent/' . str_repeat('x', 2000);
$ok = 0;
$alive = []; // pid => deadline
$reap = function (bool $all) use (&$alive, &$ok, $timeout) {
    while ($alive) {
        foreach ($alive as $pid => $deadline) {
            $r = pcntl_waitpid($pid, $status, WNOHANG);
            if ($r === $pid) {
                if (pcntl_wifexited($status) && pcntl_wexitstatus($status) === 0) $ok++;
                unset($alive[$pid]);
            } elseif (microtime(true) > $deadline) {
                echo "hung $pid\n";
                posix_kill($pid, 9);
                pcntl_waitpid($pid, $status);
                unset($alive[$pid]);
            }
        }
        if (!$all && count($alive) < $GLOBALS['batch']) return;
        // keep the parent's probe busy meanwhile: events with long arguments for Frida's thread
        // to encode and send while the next fork happens (file_get_contents stays countable:
        // once a fork, once at the end)
        @file_put_contents($GLOBALS['busy'], '');
        @fopen($GLOBALS['busy'], 'r');
    }
};
for ($i = 0; $i < $n; $i++) {
    @file_get_contents($busy);
    $pid = pcntl_fork();
    if ($pid === 0) {
        $s = file_get_contents('/etc/hostname');
        $t = file_get_contents('/etc/hostname');
        exit($s === false || $t === false ? 3 : 0);
    }
    $alive[$pid] = microtime(true) + $timeout;
    $reap(false);
}
$reap(true);
echo "forked $n ok $ok\n";
// one more hooked call per line on stdin (the queue may still be full of the busy events)
while (fgets(STDIN) !== false) {
    file_get_contents('/etc/os-release');
    echo "parent ok\n";
}
