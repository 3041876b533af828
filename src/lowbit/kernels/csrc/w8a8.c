/* int8 x int8 matmul with int32 sums for lowbit's cpu-w8a8 kernel (see kernels/cpu_w8a8.py).
 *
 * w8a8_quantize: ntok rows of x (fp32, k wide) to int8 codes q (ntok x kp, zero-padded) and one
 * scale per token: s = max|x| / 127 (dynamic) or the given static scale, a zero scale read as 1,
 * q = clamp(round-half-even(x / s), -127, 127): the float32 operations of the reference path,
 * so the codes are the same. Scalar C in every build (a small share of the time).
 * w8a8_linear: both in one call (the codes in a buffer of its own), rows [row0, row1): what
 * the Python side calls, once per thread; returns -1 if the buffer cannot be allocated.
 * w8a8_gemm: y[t][r] = ((float)sum_k q[t][k] w[r][k]) * xs[t] * ws[r] (+ b[r]) for the rows
 * [row0, row1) and all ntok tokens (y: ntok x rows, fp32). Weights: int8 rows of kp codes (kp a
 * multiple of 64, zero-padded), wsum[r] = sum_k w[r][k]. The integer sums are exact (k <= 65536).
 *
 * Paths: AVX-512 VNNI (vpdpbusd is unsigned x signed, so the codes go in as q + 128 and
 * 128 * wsum[r] comes off), AVX-VNNI on 256 bits and plain AVX2 (|w| times q with w's sign:
 * vpdpbusd, or vpmaddubsw + vpmaddwd), portable C. Blocks of 4 rows x up to 4 tokens keep the
 * sums in registers; rows are the outer loop, so the weights stream from memory once.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void w8a8_quantize(const float *x, int64_t ntok, int64_t k, int64_t kp, int dynamic,
                   float fixed, int8_t *q, float *xs) {
    for (int64_t t = 0; t < ntok; t++) {
        const float *xt = x + t * k;
        int8_t *qt = q + t * kp;
        float s = fixed;
        if (dynamic) {
            float m = 0.0f;
            for (int64_t i = 0; i < k; i++) {
                const float a = fabsf(xt[i]);
                m = a > m ? a : m;
            }
            s = m / 127.0f;
        }
        if (s == 0.0f) s = 1.0f;
        for (int64_t i = 0; i < k; i++) {
            float r = nearbyintf(xt[i] / s);
            r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
            qt[i] = (int8_t)r;
        }
        memset(qt + k, 0, (size_t)(kp - k));
        xs[t] = s;
    }
}

static inline void finish(const int32_t acc[4][4], int NT, int NR, int64_t t0, int64_t r0,
                          const int32_t *wsum, int32_t offset, const float *xs, const float *ws,
                          const float *b, float *y, int64_t rows) {
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) {
            const int32_t v = acc[t][r] - offset * wsum[r0 + r];
            float out = (float)v * xs[t0 + t] * ws[r0 + r];
            if (b) out += b[r0 + r];
            y[(t0 + t) * rows + r0 + r] = out;
        }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define OFFSET 128
#define SIMD 3

static inline __attribute__((always_inline)) void block(
        const int8_t *q, const int8_t *w, int64_t kp, const int NT, const int NR,
        int32_t out[4][4]) {
    __m512i acc[4][4];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) acc[t][r] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; k += 64) {
        __m512i wv[4];
        for (int r = 0; r < NR; r++) wv[r] = _mm512_loadu_si512(w + r * kp + k);
        for (int t = 0; t < NT; t++) {
            const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(q + t * kp + k), flip);
            for (int r = 0; r < NR; r++) acc[t][r] = _mm512_dpbusd_epi32(acc[t][r], u, wv[r]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) out[t][r] = _mm512_reduce_add_epi32(acc[t][r]);
}

#elif defined(__AVX2__)
#include <immintrin.h>
#define OFFSET 0
#if defined(__AVXVNNI__)
#define SIMD 2
#else
#define SIMD 1
#endif

static inline __m256i dot(__m256i acc, __m256i wabs, __m256i qsigned) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, wabs, qsigned);
#else /* |w| <= 128, |q| <= 127: a pair of products fits int16 */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, qsigned),
                                                   _mm256_set1_epi16(1)));
#endif
}

static inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* w * q as |w| (unsigned) times q with w's sign: |w| = 128 stays right as an unsigned byte,
 * and q, never -128, has a negation. */
static inline __attribute__((always_inline)) void block(
        const int8_t *q, const int8_t *w, int64_t kp, const int NT, const int NR,
        int32_t out[4][4]) {
    __m256i acc[4][4];
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) acc[t][r] = _mm256_setzero_si256();
    for (int64_t k = 0; k < kp; k += 32) {
        __m256i wv[4], wa[4];
        for (int r = 0; r < NR; r++) {
            wv[r] = _mm256_loadu_si256((const __m256i *)(w + r * kp + k));
            wa[r] = _mm256_abs_epi8(wv[r]);
        }
        for (int t = 0; t < NT; t++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + t * kp + k));
            for (int r = 0; r < NR; r++)
                acc[t][r] = dot(acc[t][r], wa[r], _mm256_sign_epi8(qv, wv[r]));
        }
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) out[t][r] = hsum(acc[t][r]);
}

#else /* portable C */
#define OFFSET 0
#define SIMD 0

static inline void block(const int8_t *q, const int8_t *w, int64_t kp, const int NT,
                         const int NR, int32_t out[4][4]) {
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) {
            int32_t s = 0;
            for (int64_t k = 0; k < kp; k++) s += (int32_t)q[t * kp + k] * w[r * kp + k];
            out[t][r] = s;
        }
}
#endif

/* NR rows from r0 against every token, in blocks of up to 4 tokens. */
static inline __attribute__((always_inline)) void rows_block(
        const int8_t *q, const float *xs, int64_t ntok, const int8_t *w, const float *ws,
        const int32_t *wsum, const float *b, float *y, int64_t rows, int64_t kp, int64_t r0,
        const int NR) {
    int32_t acc[4][4];
    for (int64_t t0 = 0; t0 < ntok; t0 += 4) {
        const int64_t nt = ntok - t0 < 4 ? ntok - t0 : 4;
        const int8_t *qt = q + t0 * kp, *wr = w + r0 * kp;
        switch (nt) {
        case 1: block(qt, wr, kp, 1, NR, acc); break;
        case 2: block(qt, wr, kp, 2, NR, acc); break;
        case 3: block(qt, wr, kp, 3, NR, acc); break;
        default: block(qt, wr, kp, 4, NR, acc); break;
        }
        finish(acc, (int)nt, NR, t0, r0, wsum, OFFSET, xs, ws, b, y, rows);
    }
}

void w8a8_gemm(const int8_t *q, const float *xs, int64_t ntok, const int8_t *w,
               const float *ws, const int32_t *wsum, const float *b, float *y, int64_t rows,
               int64_t kp, int64_t row0, int64_t row1) {
    int64_t r = row0;
    for (; r + 4 <= row1; r += 4) rows_block(q, xs, ntok, w, ws, wsum, b, y, rows, kp, r, 4);
    for (; r < row1; r++) rows_block(q, xs, ntok, w, ws, wsum, b, y, rows, kp, r, 1);
}

int w8a8_linear(const float *x, int64_t ntok, int64_t k, int dynamic, float fixed,
                const int8_t *w, const float *ws, const int32_t *wsum, const float *b, float *y,
                int64_t rows, int64_t kp, int64_t row0, int64_t row1) {
    int8_t *q = malloc((size_t)(ntok * kp));
    float *xs = malloc((size_t)ntok * sizeof(float));
    if (q == NULL || xs == NULL) {
        free(q);
        free(xs);
        return -1;
    }
    w8a8_quantize(x, ntok, k, kp, dynamic, fixed, q, xs);
    w8a8_gemm(q, xs, ntok, w, ws, wsum, b, y, rows, kp, row0, row1);
    free(q);
    free(xs);
    return 0;
}

int w8a8_has_simd(void) { /* 3: AVX-512 VNNI, 2: AVX-VNNI, 1: AVX2, 0: portable C */
    return SIMD;
}
