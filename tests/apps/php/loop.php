<?php
// A PHP CLI victim: reads its own source every 100 ms until killed.
echo "ready\n";
while (true) {
    file_get_contents(__FILE__);
    usleep(100000);
}
