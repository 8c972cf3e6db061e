/*
 * hailstorm.h: the Hailstorm module ABI (guest-sdk/ABI.md, version 2) for C.
 *
 * A module is built with clang for the bare `wasm32` target, without libc:
 *
 *   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -I guest-sdk/include \
 *         -o module.wasm module.c
 *
 * Export the functions of ABI.md with HAILSTORM_EXPORT("hailstorm_...");
 * the linker exports `memory` by itself. The host functions below become
 * imports of module `hailstorm` only if they are used.
 *
 * All integers in batches are little-endian; a bytes field is a u32 length
 * followed by the bytes. A function returning a buffer returns
 * hailstorm_pack(ptr, len), or a negative value after hailstorm_fail().
 */
#ifndef HAILSTORM_H
#define HAILSTORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The value hailstorm_abi_version() must return. (A deserializer may still
 * return 1: version 2 changed only bolts and sinks.) */
#define HAILSTORM_ABI_VERSION 2

/* Number of bolt state slots (ids 0 .. HAILSTORM_BOLT_SLOTS - 1). */
#define HAILSTORM_BOLT_SLOTS 4

/* What hailstorm_commit_begin returns to decline a round (not the last). */
#define HAILSTORM_SKIP_ROUND 2

/* The flag of a hailstorm_commit_end / hailstorm_commit_step result saying
 * that work is pending: the host calls hailstorm_commit_step again. */
#define HAILSTORM_MORE_WORK (1LL << 62)

/* Log levels of hailstorm_log(). */
#define HAILSTORM_LOG_ERROR 0
#define HAILSTORM_LOG_WARN 1
#define HAILSTORM_LOG_INFO 2
#define HAILSTORM_LOG_DEBUG 3

/* Exports a function under the given name, e.g.
 *   HAILSTORM_EXPORT("hailstorm_alloc") int32_t my_alloc(int32_t size); */
#define HAILSTORM_EXPORT(name) __attribute__((export_name(name), visibility("default")))

/* Imports a host function of module `hailstorm`. The C name of the
 * function is free; the import name is `name`. */
#define HAILSTORM_IMPORT(name) __attribute__((import_module("hailstorm"), import_name(name)))

/* The exports of each kind (ABI.md §4-7), to implement with HAILSTORM_EXPORT.
 *
 * Every module:
 *   int32_t hailstorm_abi_version(void);                  returns HAILSTORM_ABI_VERSION
 *   int32_t hailstorm_alloc(int32_t size);                8-aligned, 0 if out of memory
 *                                                          (size 0: a valid, distinct block)
 *   void    hailstorm_free(int32_t ptr, int32_t size);
 *   int32_t hailstorm_init(int32_t ptr, int32_t len);     init document (JSON); status
 * Deserializer:
 *   int64_t hailstorm_deserialize(int32_t ptr, int32_t len);  record batch -> emitted batch
 * Bolt:
 *   int64_t hailstorm_fold(int32_t slot, int32_t ptr, int32_t len);  tuples -> emitted batch
 *   int32_t hailstorm_merge(int32_t dst, int32_t src);
 *   int64_t hailstorm_snapshot(int32_t slot, int32_t max_bytes);     next chunk of changed
 *                                                          entries, sorted by key; empty: done
 *   int32_t hailstorm_restore(int32_t slot, int32_t ptr, int32_t len);  set entries
 * Sink:
 *   int64_t hailstorm_resume(void);                       round the output holds (0: none)
 *   int32_t hailstorm_commit_begin(int32_t ptr, int32_t len);    round header; status,
 *                                                          or HAILSTORM_SKIP_ROUND to decline it
 *   int32_t hailstorm_commit_changes(int32_t ptr, int32_t len);  changes of one instance
 *   int64_t hailstorm_commit_end(void);                   newest durable round (0: none);
 *                                                          bit 62 set: call hailstorm_commit_step
 *   int64_t hailstorm_commit_step(void);                  a bounded part of the pending work
 */

/* hailstorm.log(level, ptr, len): one UTF-8 log line. */
HAILSTORM_IMPORT("log") void hailstorm_log(int32_t level, const void *ptr, uint32_t len);

/* hailstorm.fail(ptr, len): the message of the error the current call is
 * about to return. */
HAILSTORM_IMPORT("fail") void hailstorm_fail(const void *ptr, uint32_t len);

/* Reports a NUL-terminated message through hailstorm_fail(). */
static inline void hailstorm_fail_str(const char *msg) {
    uint32_t n = 0;
    while (msg[n] != '\0') {
        n++;
    }
    hailstorm_fail(msg, n);
}

/* Little-endian loads and stores (byte by byte: no alignment needed). */
static inline uint32_t hailstorm_read_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void hailstorm_write_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint64_t hailstorm_read_u64(const uint8_t *p) {
    return (uint64_t)hailstorm_read_u32(p) | ((uint64_t)hailstorm_read_u32(p + 4) << 32);
}

static inline void hailstorm_write_u64(uint8_t *p, uint64_t v) {
    hailstorm_write_u32(p, (uint32_t)v);
    hailstorm_write_u32(p + 4, (uint32_t)(v >> 32));
}

/* The i64 result of an export returning a buffer: (ptr << 32) | len. */
static inline int64_t hailstorm_pack(const void *ptr, uint32_t len) {
    return (int64_t)(((uint64_t)(uintptr_t)ptr << 32) | (uint64_t)len);
}

/* A bounds-checked reader over a batch from the host. Every read checks
 * that its bytes are there; after a failed read `ok` is 0 and every later
 * read fails too, so a parser may check `ok` once per item. */
typedef struct {
    const uint8_t *pos;
    const uint8_t *end;
    int ok;
} hailstorm_reader;

static inline hailstorm_reader hailstorm_reader_new(const void *ptr, uint32_t len) {
    hailstorm_reader r;
    r.pos = (const uint8_t *)ptr;
    r.end = r.pos + len;
    r.ok = 1;
    return r;
}

static inline uint32_t hailstorm_reader_u32(hailstorm_reader *r) {
    if (!r->ok || (size_t)(r->end - r->pos) < 4) {
        r->ok = 0;
        return 0;
    }
    uint32_t v = hailstorm_read_u32(r->pos);
    r->pos += 4;
    return v;
}

/* Reads a bytes field: returns its start and stores its length in *len. */
static inline const uint8_t *hailstorm_reader_bytes(hailstorm_reader *r, uint32_t *len) {
    uint32_t n = hailstorm_reader_u32(r);
    if (!r->ok || (size_t)(r->end - r->pos) < n) {
        r->ok = 0;
        *len = 0;
        return r->pos;
    }
    const uint8_t *p = r->pos;
    r->pos += n;
    *len = n;
    return p;
}

/* True when the whole batch was read without error and nothing follows. */
static inline int hailstorm_reader_done(const hailstorm_reader *r) {
    return r->ok && r->pos == r->end;
}

#ifdef __cplusplus
}
#endif

#endif /* HAILSTORM_H */
