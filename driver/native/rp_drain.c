// SPDX-License-Identifier: Apache-2.0
/*
 * The driver's ring-buffer sample callback, in C: libbpf calls it once per record, and a
 * Python callback there (ctypes: GIL, a bytes object, a deque append per record) capped the
 * reader near 1M records/s and took the GIL from the decoder for each one. This one appends
 * the record to a Python-owned buffer: [u32 size][u32 0][record, padded to 8 bytes], so one
 * ring_buffer__consume() (the GIL released by ctypes) fills a whole batch.
 *
 * It stops the consume (a negative return, which libbpf hands back) once less room is left
 * than the largest record the programs write: libbpf has already moved past a record when it
 * calls us, so a record must never arrive without room for it. A record larger than that
 * (cannot happen while driver/btfcheck.py holds) is counted in `lost`, never silently.
 * Built by scripts/build.d/21-driver-drain.sh; driver/loader.py falls back to the ctypes
 * callback when the library is missing.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define RP_BATCH_FULL (-28) /* -ENOSPC: the batch is full, consume again after taking it */

struct rp_batch {
	uint8_t *buf;
	uint64_t cap;
	uint64_t used;
	uint64_t records;
	uint64_t max_record; /* stop while at least this much (+ 8) is left */
	uint64_t lost;       /* records that did not fit (larger than max_record) */
};

int rp_batch_sample(void *ctx, void *data, size_t size)
{
	struct rp_batch *b = ctx;
	uint64_t need = 8 + ((size + 7) & ~(uint64_t)7);
	if (b->used + need > b->cap) {
		b->lost++;
		return RP_BATCH_FULL;
	}
	uint8_t *p = b->buf + b->used;
	uint32_t hdr[2] = {(uint32_t)size, 0};
	memcpy(p, hdr, 8);
	memcpy(p + 8, data, size);
	b->used += need;
	b->records++;
	if (b->cap - b->used < b->max_record + 8)
		return RP_BATCH_FULL;
	return 0;
}
