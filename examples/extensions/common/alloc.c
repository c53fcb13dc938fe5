/*
 * A size-class allocator for the examples' linear memory.
 *
 * Every block is a power of two between 16 bytes and 2 GiB, with an 8-byte header
 * recording its class. free() pushes the block on its class's free list and
 * malloc() pops from that list before carving new space, so a steady workload
 * (the same requests over and over) reaches a fixed footprint and stays there:
 * memory grows only while the peak of simultaneously live blocks grows. Wasm
 * memory cannot shrink, so returning pages to the host is not attempted.
 *
 * Compiled with -fno-builtin so that the mem* functions below are not turned
 * back into calls to themselves.
 */
#include "proxy_wasm.h"

#define PAGE_SIZE 65536u
#define HEADER_SIZE 8u
#define MIN_CLASS 4u  /* 16-byte blocks */
#define MAX_CLASS 31u /* 2 GiB blocks */
#define MAGIC_USED 0x6d657368u
#define MAGIC_FREE 0x66726565u

typedef struct header {
  uint32_t size_class;
  uint32_t magic;
} header_t;

typedef struct free_block {
  header_t header;
  struct free_block *next;
} free_block_t;

extern unsigned char __heap_base;

static free_block_t *free_lists[MAX_CLASS + 1];
static uintptr_t heap_top;
static uintptr_t heap_end;

size_t wasm_memory_bytes(void) { return (size_t)__builtin_wasm_memory_size(0) * PAGE_SIZE; }

/* The smallest class whose blocks hold `size` bytes and the header (size is checked
 * against the largest class by the caller). */
static uint32_t class_for(size_t size) {
  uint32_t needed = (uint32_t)(size + HEADER_SIZE - 1);
  uint32_t c = 32u - (uint32_t)__builtin_clz(needed | 1u);
  return c < MIN_CLASS ? MIN_CLASS : c;
}

static void *carve(uint32_t size_class) {
  uint64_t block_size = (uint64_t)1 << size_class;
  if (heap_end == 0) {
    heap_top = ((uintptr_t)&__heap_base + 15u) & ~(uintptr_t)15u;
    heap_end = wasm_memory_bytes();
  }
  uint64_t needed_end = (uint64_t)heap_top + block_size;
  if (needed_end > heap_end) {
    uint64_t pages = (needed_end - heap_end + PAGE_SIZE - 1) / PAGE_SIZE;
    if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return NULL;
    heap_end = wasm_memory_bytes();
  }
  header_t *block = (header_t *)heap_top;
  heap_top = (uintptr_t)needed_end;
  block->size_class = size_class;
  return block;
}

void *malloc(size_t size) {
  if (size > ((size_t)1 << MAX_CLASS) - HEADER_SIZE) return NULL;
  uint32_t size_class = class_for(size);
  header_t *block;
  free_block_t *reused = free_lists[size_class];
  if (reused != NULL) {
    free_lists[size_class] = reused->next;
    block = &reused->header;
  } else {
    block = carve(size_class);
    if (block == NULL) return NULL;
  }
  block->magic = MAGIC_USED;
  return (unsigned char *)block + HEADER_SIZE;
}

void free(void *ptr) {
  if (ptr == NULL) return;
  free_block_t *block = (free_block_t *)((unsigned char *)ptr - HEADER_SIZE);
  /* A double free or a foreign pointer is ignored rather than corrupting a list. */
  if (block->header.magic != MAGIC_USED || block->header.size_class > MAX_CLASS) return;
  block->header.magic = MAGIC_FREE;
  block->next = free_lists[block->header.size_class];
  free_lists[block->header.size_class] = block;
}

/* The host allocates the buffers it hands to the module (configuration, header values). */
EXPORT(proxy_on_memory_allocate)
void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = a;
  const unsigned char *y = b;
  for (; n; n--, x++, y++) {
    if (*x != *y) return *x < *y ? -1 : 1;
  }
  return 0;
}

size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}
