<?php
// A PHP CLI victim for pcntl_fork under the probe: waits for "go" on stdin, forks one child,
// which prints "child PID" (so the fork is complete in the child too), waits until the file
// named by argv[1] exists, then calls a hooked sink and exits 0. The parent prints "child exit N", then "parent ok" after a hooked
// call of its own.
echo "ready\n";
fgets(STDIN);
$pid = pcntl_fork();
if ($pid === 0) {
    echo "child ", posix_getpid(), "\n";
    $deadline = microtime(true) + 60; // not left behind if the test stops before the file
    while (!file_exists($argv[1])) { if (microtime(true) > $deadline) exit(4); usleep(10000); }
    exit(file_get_contents('/etc/hostname') === false ? 3 : 0);
}
pcntl_waitpid($pid, $status);
echo "child exit ", pcntl_wifexited($status) ? pcntl_wexitstatus($status) : -1, "\n";
file_get_contents('/etc/os-release');
echo "parent ok\n";
fgets(STDIN);
