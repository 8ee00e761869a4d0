// SPDX-License-Identifier: GPL-2.0
/* Defines the enforcement maps once; the other files declare them extern and the BPF static
 * linker (bpftool gen object) makes one map of each. */
#define RPE_DEFINE_MAPS
#include "enforce.h"

char LICENSE[] SEC("license") = "GPL"; /* bpf_send_signal and ringbuf helpers are GPL-only */

/* Every shared layout, so they are all in the object's BTF: host_agent/enforce.py checks its
 * ctypes mirrors against them. Lives in a section libbpf does not load. */
struct rpe_layouts {
	struct rpe_proc proc;
	struct rpe_net_rule net_rule;
	struct rpe_verdict verdict;
	struct rpe_prefix prefix;
	struct rpe_conf conf;
	struct rpe_event event;
};
struct rpe_layouts rpe_layouts SEC(".rpe_layouts") __attribute__((used));
