/* CI only (.ci/cross): what clang's own mm_malloc.h (pulled in by
 * immintrin.h in ring's x86-64 code) needs from <stdlib.h>, for
 * `cargo check --target x86_64-apple-darwin` without a macOS SDK. */
#ifndef STDLIB_STANDIN_H
#define STDLIB_STANDIN_H
typedef __SIZE_TYPE__ size_t;
void *malloc(size_t size);
void free(void *ptr);
int posix_memalign(void **ptr, size_t alignment, size_t size);
#endif
