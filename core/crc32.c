/* crc32.c — CRC-32 (the zlib polynomial, reflected) of the store's frames.
 *
 * Every record the journal takes is checksummed once on its way in, so on the batch
 * send path this is a share of the work per message. On x86-64 with PCLMULQDQ the
 * bulk is folded 64 bytes a step with carry-less multiplies (Gopal et al., "Fast CRC
 * Computation for Generic Polynomials Using PCLMULQDQ Instruction", Intel 2009; the
 * constants are the reflected ones of that paper for 0x04C11DB7); the rest, and any
 * other machine, take eight bytes a step from tables ("slicing by 8"). Both give the
 * same value, which tests/unit checks on every length and alignment up to 4 KiB. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "busfs/store.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC_CLMUL 1
#endif

/* Table k holds the CRC of a byte followed by k zero bytes. */
static uint32_t crc_table[8][256];
#ifdef CRC_CLMUL
static bool crc_clmul;
#endif

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = crc_table[0][crc_table[t - 1][i] & 0xff] ^
					  (crc_table[t - 1][i] >> 8);
#ifdef CRC_CLMUL
	__builtin_cpu_init();
	crc_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

/* c: the running register (not inverted). */
static uint32_t crc_tables(uint32_t c, const uint8_t *b, size_t n)
{
	for (; n >= 8; n -= 8, b += 8) {
		uint32_t lo = c ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
				   (uint32_t)b[3] << 24);
		uint32_t hi = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 |
			      (uint32_t)b[7] << 24;
		c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		    crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		    crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
		    crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
	}
	for (; n; n--, b++)
		c = crc_table[0][(c ^ *b) & 0xff] ^ (c >> 8);
	return c;
}

#ifdef CRC_CLMUL
/* n: at least 64 and a multiple of 16. Folds the buffer into 128 bits, then 64, then
 * reduces to 32 (Barrett). */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_clmul_fold(uint32_t c, const uint8_t *b, size_t n)
{
	const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);  /* 4 x 128 bits */
	const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);  /* 1 x 128 */
	const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124);               /* 64 -> 32 */
	const __m128i mu_p = _mm_set_epi64x(0x1f7011641, 0x1db710641);   /* mu, P' */
	const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);

	__m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)b);
	__m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(b + 16));
	__m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(b + 32));
	__m128i x4 = _mm_loadu_si128((const __m128i *)(const void *)(b + 48));
	x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)c));
	b += 64;
	n -= 64;
	for (; n >= 64; n -= 64, b += 64) {
		__m128i h1 = _mm_clmulepi64_si128(x1, k1k2, 0x11);
		__m128i h2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
		__m128i h3 = _mm_clmulepi64_si128(x3, k1k2, 0x11);
		__m128i h4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
		x1 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
		x2 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
		x3 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
		x4 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
		x1 = _mm_xor_si128(_mm_xor_si128(x1, h1),
				   _mm_loadu_si128((const __m128i *)(const void *)b));
		x2 = _mm_xor_si128(_mm_xor_si128(x2, h2),
				   _mm_loadu_si128((const __m128i *)(const void *)(b + 16)));
		x3 = _mm_xor_si128(_mm_xor_si128(x3, h3),
				   _mm_loadu_si128((const __m128i *)(const void *)(b + 32)));
		x4 = _mm_xor_si128(_mm_xor_si128(x4, h4),
				   _mm_loadu_si128((const __m128i *)(const void *)(b + 48)));
	}
	/* Four lanes into one, then the 16-byte blocks left. */
	__m128i next[3] = {x2, x3, x4};
	for (int i = 0; i < 3; i++) {
		__m128i h = _mm_clmulepi64_si128(x1, k3k4, 0x11);
		x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x00), h), next[i]);
	}
	for (; n >= 16; n -= 16, b += 16) {
		__m128i h = _mm_clmulepi64_si128(x1, k3k4, 0x11);
		x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x00), h),
				   _mm_loadu_si128((const __m128i *)(const void *)b));
	}
	/* 128 -> 64 bits (which also appends the 32 zero bits a CRC needs). */
	x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(k3k4, x1, 0x01));
	/* 64 -> 32. */
	__m128i t = _mm_srli_si128(x1, 4);
	x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00), t);
	/* Barrett reduction. */
	t = x1;
	x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), mu_p, 0x10);
	x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), mu_p, 0x00);
	x1 = _mm_xor_si128(x1, t);
	return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

uint32_t crc32_compute(const void *p, size_t n)
{
	pthread_once(&crc_once, crc_init);
	const uint8_t *b = p;
	uint32_t c = 0xffffffffu;
#ifdef CRC_CLMUL
	if (crc_clmul && n >= 64) {
		size_t bulk = n & ~(size_t)15;
		c = crc_clmul_fold(c, b, bulk);
		b += bulk;
		n -= bulk;
	}
#endif
	return crc_tables(c, b, n) ^ 0xffffffffu;
}

uint32_t crc32_compute_portable(const void *p, size_t n)
{
	pthread_once(&crc_once, crc_init);
	return crc_tables(0xffffffffu, p, n) ^ 0xffffffffu;
}
