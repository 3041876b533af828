/* 4-bit lookup-table matmul for lowbit's cpu-lut4 kernel (see kernels/cpu_lut.py).
 *
 * Weights: rows of kp codes (kp a multiple of 32), packed 16 bytes per 32 codes: byte j holds
 * code j in its low nibble and code j + 16 in its high nibble. Each code indexes a table of 16
 * fp32 values; each group of gs codes (gs a multiple of 16) has one fp32 scale, a row of
 * scales being `groups` long (at least ceil(kp / gs)). So
 *     y[t][r] = sum_g scale[r][g] * sum_{k in g} lut[code[r][k]] * x[t][k].
 * lut4_gemv computes rows [row0, row1) for ntok <= 4 tokens (x: ntok x kp, y: ntok x rows);
 * lut4_dequant writes the fp32 weights of rows [row0, row1). Products and sums are fp32.
 * lut4_repack builds those rows from lowbit's storage packing (code i of the flattened weight
 * in byte i / 2, low nibble first; row r starts at code r * k), padding with code 0.
 */
#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>

/* AVX-512: one vpermps looks a whole 16-entry table up for 16 codes. */
static inline __m512 decode16(const uint8_t *b, __m512 lut, int high) {
    __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
    if (high) idx = _mm512_srli_epi32(idx, 4);
    return _mm512_permutexvar_ps(_mm512_and_si512(idx, _mm512_set1_epi32(15)), lut);
}

/* NT tokens (1..4, a constant after inlining, so the accumulators stay in registers); each
 * token has two accumulators, for the even and odd 16-code steps: two FMA chains in flight. */
static inline __attribute__((always_inline)) void gemv_rows(
        const uint8_t *w, const float *scale, __m512 table, const float *x, float *y,
        int64_t rows, int64_t kp, int64_t gs, int64_t groups, int64_t row0, int64_t row1,
        const int NT) {
    const int64_t per = gs / 16; /* 16-code steps per scale: no division in the loop */
    for (int64_t r = row0; r < row1; r++) {
        const uint8_t *wr = w + r * (kp / 2);
        const float *sr = scale + r * groups;
        __m512 a0[4], a1[4];
        for (int t = 0; t < NT; t++) a0[t] = a1[t] = _mm512_setzero_ps();
        int64_t g = 0, left = per;
        for (int64_t k = 0; k < kp; k += 32) {
            const __m512 v0 = _mm512_mul_ps(decode16(wr + k / 2, table, 0),
                                            _mm512_set1_ps(sr[g]));
            if (--left == 0) { g++; left = per; }
            const __m512 v1 = _mm512_mul_ps(decode16(wr + k / 2, table, 1),
                                            _mm512_set1_ps(sr[g]));
            if (--left == 0) { g++; left = per; }
            for (int t = 0; t < NT; t++) {
                a0[t] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x + t * kp + k), a0[t]);
                a1[t] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x + t * kp + k + 16), a1[t]);
            }
        }
        for (int t = 0; t < NT; t++)
            y[t * rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[t], a1[t]));
    }
}

void lut4_gemv(const uint8_t *w, const float *scale, const float *lut, const float *x,
               float *y, int64_t rows, int64_t kp, int64_t gs, int64_t groups, int64_t ntok,
               int64_t row0, int64_t row1) {
    const __m512 t = _mm512_loadu_ps(lut);
    switch (ntok) {
    case 1: gemv_rows(w, scale, t, x, y, rows, kp, gs, groups, row0, row1, 1); break;
    case 2: gemv_rows(w, scale, t, x, y, rows, kp, gs, groups, row0, row1, 2); break;
    case 3: gemv_rows(w, scale, t, x, y, rows, kp, gs, groups, row0, row1, 3); break;
    default: gemv_rows(w, scale, t, x, y, rows, kp, gs, groups, row0, row1, 4); break;
    }
}

void lut4_dequant(const uint8_t *w, const float *scale, const float *lut, float *out,
                  int64_t kp, int64_t gs, int64_t groups, int64_t row0, int64_t row1) {
    const __m512 table = _mm512_loadu_ps(lut);
    for (int64_t r = row0; r < row1; r++) {
        const uint8_t *wr = w + r * (kp / 2);
        const int64_t per = gs / 16;
        int64_t g = r * groups, left = per;
        for (int64_t k0 = 0; k0 < kp; k0 += 16) {
            _mm512_storeu_ps(out + r * kp + k0,
                             _mm512_mul_ps(decode16(wr + (k0 >> 5) * 16, table, (k0 >> 4) & 1),
                                           _mm512_set1_ps(scale[g])));
            if (--left == 0) { g++; left = per; }
        }
    }
}

#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline void decode16(const uint8_t *b, __m256 lo, __m256 hi, __m256 out[2], int high) {
    /* the 16 codes of one half (low or high nibbles of 16 bytes) -> two vectors of 8 values */
    for (int h = 0; h < 2; h++) {
        __m128i bytes = _mm_loadl_epi64((const __m128i *)(b + 8 * h));
        __m256i idx = _mm256_cvtepu8_epi32(bytes);
        idx = high ? _mm256_srli_epi32(idx, 4) : _mm256_and_si256(idx, _mm256_set1_epi32(15));
        __m256 a = _mm256_permutevar8x32_ps(lo, idx);
        __m256 c = _mm256_permutevar8x32_ps(hi, idx);
        __m256 use_hi = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        out[h] = _mm256_blendv_ps(a, c, use_hi);
    }
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) void gemv_rows(
        const uint8_t *w, const float *scale, __m256 lo, __m256 hi, const float *x, float *y,
        int64_t rows, int64_t kp, int64_t gs, int64_t groups, int64_t row0, int64_t row1,
        const int NT) {
    const int64_t per = gs / 16;
    for (int64_t r = row0; r < row1; r++) {
        const uint8_t *wr = w + r * (kp / 2);
        const float *sr = scale + r * groups;
        __m256 a0[4], a1[4];
        for (int t = 0; t < NT; t++) a0[t] = a1[t] = _mm256_setzero_ps();
        int64_t g = 0, left = per;
        for (int64_t k0 = 0; k0 < kp; k0 += 16) {
            __m256 v[2];
            decode16(wr + (k0 >> 5) * 16, lo, hi, v, (k0 >> 4) & 1);
            const __m256 s = _mm256_set1_ps(sr[g]);
            const __m256 v0 = _mm256_mul_ps(v[0], s), v1 = _mm256_mul_ps(v[1], s);
            for (int t = 0; t < NT; t++) {
                a0[t] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + t * kp + k0), a0[t]);
                a1[t] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + t * kp + k0 + 8), a1[t]);
            }
            if (--left == 0) { g++; left = per; }
        }
        for (int t = 0; t < NT; t++) y[t * rows + r] = hsum(_mm256_add_ps(a0[t], a1[t]));
    }
}

void lut4_gemv(const uint8_t *w, const float *scale, const float *lut, const float *x,
               float *y, int64_t rows, int64_t kp, int64_t gs, int64_t groups, int64_t ntok,
               int64_t row0, int64_t row1) {
    const __m256 lo = _mm256_loadu_ps(lut), hi = _mm256_loadu_ps(lut + 8);
    switch (ntok) {
    case 1: gemv_rows(w, scale, lo, hi, x, y, rows, kp, gs, groups, row0, row1, 1); break;
    case 2: gemv_rows(w, scale, lo, hi, x, y, rows, kp, gs, groups, row0, row1, 2); break;
    case 3: gemv_rows(w, scale, lo, hi, x, y, rows, kp, gs, groups, row0, row1, 3); break;
    default: gemv_rows(w, scale, lo, hi, x, y, rows, kp, gs, groups, row0, row1, 4); break;
    }
}

void lut4_dequant(const uint8_t *w, const float *scale, const float *lut, float *out,
                  int64_t kp, int64_t gs, int64_t groups, int64_t row0, int64_t row1) {
    const __m256 lo = _mm256_loadu_ps(lut), hi = _mm256_loadu_ps(lut + 8);
    for (int64_t r = row0; r < row1; r++) {
        const uint8_t *wr = w + r * (kp / 2);
        const int64_t per = gs / 16;
        int64_t g = r * groups, left = per;
        for (int64_t k0 = 0; k0 < kp; k0 += 16) {
            __m256 v[2];
            decode16(wr + (k0 >> 5) * 16, lo, hi, v, (k0 >> 4) & 1);
            const __m256 s = _mm256_set1_ps(scale[g]);
            _mm256_storeu_ps(out + r * kp + k0, _mm256_mul_ps(v[0], s));
            _mm256_storeu_ps(out + r * kp + k0 + 8, _mm256_mul_ps(v[1], s));
            if (--left == 0) { g++; left = per; }
        }
    }
}

#else /* portable C: same layout; sums in another order than the vector paths */

static inline float code_value(const uint8_t *wr, int64_t k, const float *lut) {
    const int64_t base = k - k % 32, j = k % 32;
    const uint8_t byte = wr[base / 2 + (j % 16)];
    return lut[j < 16 ? (byte & 15) : (byte >> 4)];
}

void lut4_gemv(const uint8_t *w, const float *scale, const float *lut, const float *x,
               float *y, int64_t rows, int64_t kp, int64_t gs, int64_t groups, int64_t ntok,
               int64_t row0, int64_t row1) {
    for (int64_t r = row0; r < row1; r++) {
        const uint8_t *wr = w + r * (kp / 2);
        for (int64_t t = 0; t < ntok; t++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < kp; k++)
                acc += code_value(wr, k, lut) * scale[r * groups + k / gs] * x[t * kp + k];
            y[t * rows + r] = acc;
        }
    }
}

void lut4_dequant(const uint8_t *w, const float *scale, const float *lut, float *out,
                  int64_t kp, int64_t gs, int64_t groups, int64_t row0, int64_t row1) {
    for (int64_t r = row0; r < row1; r++)
        for (int64_t k = 0; k < kp; k++)
            out[r * kp + k] = code_value(w + r * (kp / 2), k, lut) * scale[r * groups + k / gs];
}
#endif

static inline uint8_t stored_code(const uint8_t *codes, int64_t i) {
    return (codes[i >> 1] >> ((i & 1) * 4)) & 15;
}

void lut4_repack(const uint8_t *codes, uint8_t *out, int64_t k, int64_t kp, int64_t row0,
                 int64_t row1) {
    for (int64_t r = row0; r < row1; r++) {
        const int64_t base = r * k;
        /* whole blocks of 32 codes starting on a byte: 16 stored bytes, codes 2m and 2m + 1 in
           byte m; out byte j takes code j (byte j / 2) and code j + 16 (byte 8 + j / 2) */
        const int64_t aligned = (base & 1) == 0 ? k / 32 : 0;
        const uint8_t *s = codes + base / 2;
        uint8_t *o = out + r * (kp / 2);
        for (int64_t b = 0; b < aligned; b++, s += 16, o += 16)
            for (int j = 0; j < 16; j += 2) {
                o[j] = (uint8_t)((s[j / 2] & 15) | (s[8 + j / 2] << 4));
                o[j + 1] = (uint8_t)((s[j / 2] >> 4) | (s[8 + j / 2] & 0xF0));
            }
        for (int64_t b = aligned; b < kp / 32; b++, o += 16)
            for (int j = 0; j < 16; j++) {
                const int64_t c0 = b * 32 + j, c1 = c0 + 16;
                const uint8_t lo = c0 < k ? stored_code(codes, base + c0) : 0;
                const uint8_t hi = c1 < k ? stored_code(codes, base + c1) : 0;
                o[j] = (uint8_t)(lo | (hi << 4));
            }
    }
}

int lut4_has_simd(void) { /* 2: AVX-512, 1: AVX2, 0: portable C */
#if defined(__AVX512F__)
    return 2;
#elif defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}
