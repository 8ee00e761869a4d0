// SPDX-License-Identifier: GPL-2.0
/*
 * The maps of the in-kernel detection check (go_detect.h): the per-pid rules in block mode,
 * the per-CPU scratch buffer, the SQL keywords. The check itself is inlined into each sink
 * program (go_sql, go_exec, go_file, go_net).
 */
#define GO_DETECT_DEFINE_MAPS
#include "go_detect.h"
