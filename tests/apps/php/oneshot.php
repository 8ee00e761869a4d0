<?php
// A PHP CLI victim that calls one sink when told to (a line on stdin), then exits at once.
echo "ready\n";
fgets(STDIN);
file_get_contents('/etc/hostname');
