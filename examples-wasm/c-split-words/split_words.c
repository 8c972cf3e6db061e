/*
 * split_words.c: the split-words deserializer of examples-wasm/split-words,
 * written in C against guest-sdk/include/hailstorm.h, without libc.
 *
 * Each record is split into words: maximal runs of ASCII letters and
 * digits, lowercased; every other byte separates words. Each word becomes
 * one tuple (key = the word, value = empty), tagged with the index of its
 * record. For any input the output is byte-for-byte that of the Rust
 * module.
 *
 * Build (from the workspace root):
 *   mkdir -p target/wasm-c && clang --target=wasm32 -O2 -nostdlib \
 *     -Wl,--no-entry -I guest-sdk/include \
 *     -o target/wasm-c/split_words_c.wasm examples-wasm/c-split-words/split_words.c
 *
 * Memory. Without libc there is no malloc, so this file has a tiny one:
 * power-of-two size classes from 16 bytes to 1 GiB, each with a free list,
 * carved from memory obtained with memory.grow. The host passes the size
 * back to hailstorm_free, so blocks need no header. Buffers the host
 * allocated stay valid until it frees them, whatever other calls happen
 * in between. The emitted batch lives in one growable block owned by the
 * module; each call starts it over, which ABI.md allows because a returned
 * buffer need only stay valid until the next call.
 */
#include <hailstorm.h>

/* The compiler may turn copy loops into calls to these; without libc the
 * module must define them. (LLVM never rewrites a function named memcpy or
 * memset into a call to itself.) */
void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) {
        *d++ = (uint8_t)c;
    }
    return dst;
}

/* ---- allocator ---------------------------------------------------------- */

#define PAGE 65536u
#define MIN_CLASS 4  /* 16-byte blocks: room for the free-list link, 8-aligned */
#define MAX_CLASS 30 /* 1 GiB blocks */
/* ABI.md: guest memory above 2 GiB is not supported. Stopping there also
 * keeps heap_top, a 32-bit address, from wrapping around. */
#define HEAP_LIMIT 0x80000000u

extern uint8_t __heap_base; /* provided by the linker: end of static data and stack */

static uintptr_t heap_top; /* next unused byte; 0 until the first allocation */
static void *free_lists[MAX_CLASS + 1];

/* The size class of a request: the smallest k with 2^k >= size, or -1. */
static int size_class(uint32_t size) {
    int k = MIN_CLASS;
    while (k <= MAX_CLASS && ((uint32_t)1 << k) < size) {
        k++;
    }
    return k <= MAX_CLASS ? k : -1;
}

static void *alloc_block(uint32_t size) {
    int k = size_class(size);
    if (k < 0) {
        return 0;
    }
    void *block = free_lists[k];
    if (block) {
        free_lists[k] = *(void **)block;
        return block;
    }
    if (heap_top == 0) {
        /* Round up to 16 so that every block, a multiple of 16 in size,
         * stays 16-byte aligned (the ABI asks for 8). */
        heap_top = ((uintptr_t)&__heap_base + 15u) & ~(uintptr_t)15u;
    }
    uint64_t need_end = (uint64_t)heap_top + ((uint64_t)1 << k);
    if (need_end > HEAP_LIMIT) {
        return 0;
    }
    uint64_t mem_end = (uint64_t)__builtin_wasm_memory_size(0) * PAGE;
    if (need_end > mem_end) {
        uint64_t pages = (need_end - mem_end + PAGE - 1) / PAGE;
        if (pages > 65536u || __builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) {
            return 0;
        }
    }
    block = (void *)heap_top;
    heap_top = (uintptr_t)need_end;
    return block;
}

static void free_block(void *ptr, uint32_t size) {
    int k = size_class(size);
    if (!ptr || k < 0) {
        return;
    }
    *(void **)ptr = free_lists[k];
    free_lists[k] = ptr;
}

HAILSTORM_EXPORT("hailstorm_alloc") int32_t hs_alloc(int32_t size) {
    /* Sizes are unsigned; a zero-byte request still gets a real block. */
    return (int32_t)(uintptr_t)alloc_block(size == 0 ? 1u : (uint32_t)size);
}

HAILSTORM_EXPORT("hailstorm_free") void hs_free(int32_t ptr, int32_t size) {
    free_block((void *)(uintptr_t)(uint32_t)ptr, size == 0 ? 1u : (uint32_t)size);
}

/* ---- the emitted batch ---------------------------------------------------- */

static uint8_t *out_buf;
static uint32_t out_cap;
static uint32_t out_len;

/* Makes room for `more` bytes after out_len; 0 when memory is exhausted. */
static int out_reserve(uint32_t more) {
    uint64_t need = (uint64_t)out_len + more;
    if (need <= out_cap) {
        return 1;
    }
    uint64_t cap = out_cap ? (uint64_t)out_cap * 2 : 64 * 1024;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > ((uint64_t)1 << MAX_CLASS)) {
        return 0;
    }
    uint8_t *grown = (uint8_t *)alloc_block((uint32_t)cap);
    if (!grown) {
        return 0;
    }
    memcpy(grown, out_buf, out_len);
    free_block(out_buf, out_cap);
    out_buf = grown;
    out_cap = (uint32_t)cap;
    return 1;
}

/* ---- words -------------------------------------------------------------- */

/* 1 for ASCII letters and digits, 0 for separators. */
static const uint8_t WORD[256] = {
    ['0' ... '9'] = 1,
    ['A' ... 'Z'] = 1,
    ['a' ... 'z'] = 1,
};

/* Appends one tuple (input, word lowercased, empty value). */
static int emit_word(uint32_t input, const uint8_t *word, uint32_t len) {
    if (!out_reserve(12 + len)) {
        return 0;
    }
    uint8_t *p = out_buf + out_len;
    hailstorm_write_u32(p, input);
    hailstorm_write_u32(p + 4, len);
    for (uint32_t i = 0; i < len; i++) {
        uint8_t c = word[i];
        p[8 + i] = (uint8_t)(c - 'A') < 26 ? (uint8_t)(c + 32) : c;
    }
    hailstorm_write_u32(p + 8 + len, 0);
    out_len += 12 + len;
    return 1;
}

/* ---- exports ------------------------------------------------------------ */

HAILSTORM_EXPORT("hailstorm_abi_version") int32_t hs_abi_version(void) {
    return HAILSTORM_ABI_VERSION;
}

static int initialized;

/* The module takes no configuration, so the init document is not read. */
HAILSTORM_EXPORT("hailstorm_init") int32_t hs_init(int32_t ptr, int32_t len) {
    (void)ptr;
    (void)len;
    if (initialized) {
        hailstorm_fail_str("hailstorm_init was called twice");
        return 1;
    }
    initialized = 1;
    return 0;
}

HAILSTORM_EXPORT("hailstorm_deserialize") int64_t hs_deserialize(int32_t ptr, int32_t len) {
    if (!initialized) {
        hailstorm_fail_str("hailstorm_init has not been called");
        return -1;
    }
    hailstorm_reader r = hailstorm_reader_new((const void *)(uintptr_t)(uint32_t)ptr, (uint32_t)len);
    uint32_t count = hailstorm_reader_u32(&r);
    if (!r.ok) {
        hailstorm_fail_str("record batch: truncated count");
        return -1;
    }
    out_len = 0;
    if (!out_reserve(4)) {
        hailstorm_fail_str("out of memory");
        return -1;
    }
    out_len = 4;
    uint32_t emitted = 0;
    /* Every record takes at least 4 bytes, so a bogus count stops at the
     * first failed read. */
    for (uint32_t i = 0; i < count; i++) {
        uint32_t n;
        const uint8_t *rec = hailstorm_reader_bytes(&r, &n);
        if (!r.ok) {
            hailstorm_fail_str("record batch: truncated record");
            return -1;
        }
        uint32_t j = 0;
        while (j < n) {
            while (j < n && !WORD[rec[j]]) {
                j++;
            }
            uint32_t start = j;
            while (j < n && WORD[rec[j]]) {
                j++;
            }
            if (j > start) {
                if (!emit_word(i, rec + start, j - start)) {
                    hailstorm_fail_str("out of memory");
                    return -1;
                }
                emitted++;
            }
        }
    }
    if (!hailstorm_reader_done(&r)) {
        hailstorm_fail_str("record batch: unexpected bytes after the last record");
        return -1;
    }
    hailstorm_write_u32(out_buf, emitted);
    return hailstorm_pack(out_buf, out_len);
}
