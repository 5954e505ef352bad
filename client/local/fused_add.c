/* The merge kernel (client/fused.py builds and calls it). Two entry points, each over many weights in
 * one call, rows split between threads (pthreads):
 *
 * quiver_add_products: out = W + sum_t s_t B_t A_t in one pass over W. W and out: m x n, fp32, bf16
 * or fp16, row-major. Each B_t (m x r_t, any strides) and A_t (r_t x n, rows contiguous) is fp32.
 * Each element of out is W[i, j] + sum_t sum_k s_t B_t[i, k] A_t[k, j], accumulated in fp32 registers
 * and rounded once to W's dtype (round to nearest even, as torch rounds). W is read once and out
 * written once: no product matrix is ever stored. The product is computed as BLIS computes a GEMM: A's
 * columns packed into panels, the rows of B for a tile packed side by side, and a register tile of
 * MR x NR accumulators fed from them (see products()).
 *
 * quiver_concat: for the weights a GEMM library multiplies instead, the terms concatenated in the
 * weight's dtype, [s_1 B_1 | ... | s_K B_K] and [A_1; ...; A_K], in one pass.
 *
 * Written with GCC/Clang vector extensions (one vector = one register of the widest unit), so the
 * same source compiles to AVX-512, AVX2 or NEON under -march=native; bf16 on AVX2 has a few
 * instructions of its own (add_row).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && !defined(__AVX512F__)
#include <immintrin.h>
#endif

/* VL floats per vector: one register of the widest vector unit (AVX-512: 16, AVX2 and NEON: 8). */
#if defined(__AVX512F__)
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(4 * VL)));
typedef uint32_t vu __attribute__((vector_size(4 * VL)));
typedef uint16_t vh __attribute__((vector_size(2 * VL)));
/* The same vectors at any address (loads and stores through these are plain unaligned moves). */
typedef float vf_u __attribute__((vector_size(4 * VL), aligned(4)));
typedef uint16_t vh_u __attribute__((vector_size(2 * VL), aligned(2)));

enum { F32 = 0, BF16 = 1, F16 = 2 };

#ifdef __FLT16_MAX__
#define HAVE_F16 1
typedef _Float16 vhf __attribute__((vector_size(2 * VL)));
typedef _Float16 vhf_u __attribute__((vector_size(2 * VL), aligned(2)));
#else
#define HAVE_F16 0
#endif

/* Bit 0: fp32, bit 1: bf16, bit 2: fp16 (when the compiler has _Float16). */
int quiver_fused_dtypes(void) { return 1 | 2 | (HAVE_F16 << 2); }

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays a quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float load1(int dt, const void *p, int64_t i) {
    if (dt == BF16) return bf16_to_f32(((const uint16_t *)p)[i]);
#if HAVE_F16
    if (dt == F16) return (float)((const _Float16 *)p)[i];
#endif
    return ((const float *)p)[i];
}

static inline void store1(int dt, void *p, int64_t i, float v) {
    if (dt == BF16) {
        ((uint16_t *)p)[i] = f32_to_bf16(v);
        return;
    }
#if HAVE_F16
    if (dt == F16) {
        ((_Float16 *)p)[i] = (_Float16)v;
        return;
    }
#endif
    ((float *)p)[i] = v;
}

static inline vf loadv(int dt, const void *p, int64_t i) {
    if (dt == BF16) return (vf)(__builtin_convertvector(*(const vh_u *)((const uint16_t *)p + i), vu) << 16);
#if HAVE_F16
    if (dt == F16) return __builtin_convertvector(*(const vhf_u *)((const _Float16 *)p + i), vf);
#endif
    return *(const vf_u *)((const float *)p + i);
}

/* f rounded to bf16 in the high half of each 32-bit lane: to nearest, ties to even (as torch rounds);
 * a NaN keeps its sign and payload and becomes quiet. */
static inline vu bf16_high(vf f) {
    const vu u = (vu)f, nan = (vu)(f != f);
    return ((u + 0x7fffu + ((u >> 16) & 1u)) & ~nan) | ((u | 0x400000u) & nan);
}

static inline void storev(int dt, void *p, int64_t i, vf f) {
    if (dt == BF16) {
        *(vh_u *)((uint16_t *)p + i) = __builtin_convertvector(bf16_high(f) >> 16, vh);
        return;
    }
#if HAVE_F16
    if (dt == F16) {
        *(vhf_u *)((_Float16 *)p + i) = __builtin_convertvector(f, vhf);
        return;
    }
#endif
    *(vf_u *)((float *)p + i) = f;
}

/* The register tile, as in BLIS's sgemm micro-kernels: MR rows by NV vectors (NR = NV * VL columns).
 * MR * NV accumulators, NV vectors of A and one broadcast of B stay in registers through the whole
 * rank: AVX2 has 16 vector registers (6 x 2 uses 15), AVX-512 32 (6 x 4 uses 29), NEON 32 of half
 * our vector width (6 x 2 uses 29). On a 2-core AMD EPYC (AVX2) this tile runs at ~90 GFLOP/s per
 * core hot; 4 x 3 (fewer broadcasts) and 8 x 1 were slower, and more accumulators do not fit. */
#ifndef MR
#define MR 6
#endif
#ifndef NV
#if defined(__AVX512F__)
#define NV 4
#else
#define NV 2
#endif
#endif
#define NR (VL * NV)
/* Packed A per block of columns: all of A for most modules (2 MB is rank 128 over 4096 columns). It is
 * read once per tile of rows, sequentially, which streams as fast from L3 as from L1; blocking only
 * bounds the buffer (B's rows are packed again for every block). */
#ifndef A_BLOCK_BYTES
#define A_BLOCK_BYTES (2 * 1024 * 1024)
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
/* bf16 on AVX2, which has neither bf16 conversions nor an 8-lane narrowing store: loads widen in one
 * instruction, and rounding is the same integer arithmetic as bf16_high with the NaN lanes blended in. */
static inline vf bf16_load8(const uint16_t *p) {
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
}

static inline __m256i bf16_round8(vf f) {
    const __m256i u = (__m256i)f;
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
    const __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    const __m256 nan = _mm256_cmp_ps((__m256)f, (__m256)f, _CMP_UNORD_Q);
    return _mm256_srli_epi32((__m256i)_mm256_blendv_ps((__m256)rounded, (__m256)quiet, nan), 16);
}
#endif

/* One row of a tile: out[i ...] = w[i ...] + f[0 .. NV), each element rounded once to the dtype. */
static inline void add_row(int dt, const void *w, void *out, int64_t i, const vf *f) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    if (dt == BF16 && NV % 2 == 0) {
        for (int v = 0; v < NV; v += 2) {
            const uint16_t *src = (const uint16_t *)w + i + VL * v;
            const __m256i lo = bf16_round8(bf16_load8(src) + f[v]), hi = bf16_round8(bf16_load8(src + VL) + f[v + 1]);
            _mm256_storeu_si256((__m256i *)((uint16_t *)out + i + VL * v),
                                _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8));
        }
        return;
    }
#endif
    for (int v = 0; v < NV; v++) storev(dt, out, i + VL * v, loadv(dt, w, i + VL * v) + f[v]);
}

typedef struct {
    const float *b; /* B[i, k] = b[i * b_row + k * b_col] */
    const float *a; /* A[k, j] = a[k * n + j] */
    int64_t r, b_row, b_col;
    float scale;
} quiver_term;

/* Columns [j0, j0 + nc) of A_cat = [A_1; ...; A_K] (rank x n) packed as ceil(nc / NR) panels: panel p
 * holds, for k = 0 .. rank-1 in turn, the NR values A_cat[k, j0 + p NR ...], zero past column j0 + nc.
 * The tile's loop then reads A sequentially from one small block (A's rows themselves lie n floats
 * apart: with n = 1024 every one maps to the same L1 set). */
static void pack_a(const quiver_term *terms, int64_t nterms, int64_t rank, int64_t n, int64_t j0, int64_t nc,
                   float *ap) {
    int64_t k = 0;
    for (const quiver_term *t = terms; t < terms + nterms; t++)
        for (int64_t kt = 0; kt < t->r; kt++, k++) {
            const float *src = t->a + kt * n + j0;
            for (int64_t p = 0; p * NR < nc; p++) {
                float *dst = ap + (p * rank + k) * NR;
                const int64_t cols = nc - p * NR < NR ? nc - p * NR : NR;
                if (cols == NR) {
                    for (int v = 0; v < NV; v++) *(vf *)(dst + v * VL) = *(const vf_u *)(src + p * NR + v * VL);
                } else {
                    memcpy(dst, src + p * NR, sizeof(float) * cols);
                    memset(dst + cols, 0, sizeof(float) * (NR - cols));
                }
            }
        }
}

/* Rows [i, i + mr) of B_cat = [s_1 B_1 | ... | s_K B_K], k-major (MR values per k), zero past row i + mr:
 * the tile's broadcasts read it sequentially, whatever the strides of the B_t. */
static void pack_b(const quiver_term *terms, int64_t nterms, int64_t i, int mr, float *bp) {
    for (const quiver_term *t = terms; t < terms + nterms; bp += t->r * MR, t++)
        for (int q = 0; q < MR; q++) {
            const float *row = t->b + (i + q) * t->b_row;
            for (int64_t k = 0; k < t->r; k++) bp[k * MR + q] = q < mr ? t->scale * row[k * t->b_col] : 0.0f;
        }
}

/* The MR x NR block of B_cat A_cat from packed slivers, in fp32 registers. */
static inline __attribute__((always_inline)) void products(const float *restrict ap, const float *restrict bp,
                                                           int64_t rank, vf c[MR][NV]) {
    for (int q = 0; q < MR; q++)
        for (int v = 0; v < NV; v++) c[q][v] = (vf){0};
#pragma GCC unroll 4
    for (int64_t k = 0; k < rank; k++, ap += NR, bp += MR) {
        vf a[NV];
        for (int v = 0; v < NV; v++) a[v] = *(const vf *)(ap + v * VL);
        for (int q = 0; q < MR; q++)
            for (int v = 0; v < NV; v++) c[q][v] += bp[q] * a[v];
    }
}

/* Rows [r0, r1) and columns [j0, j0 + nc) of out = W + B_cat A_cat, with A's columns packed in ap. The
 * products are summed first and W added last, so W's loads can overlap the arithmetic (software
 * prefetching of W and out, at several distances, measured no faster). Each element is rounded once,
 * when it is stored. */
static inline __attribute__((always_inline)) void add_block(int dt, const void *w, void *out, int64_t n,
                                                            const quiver_term *terms, int64_t nterms, int64_t rank,
                                                            const float *ap, float *bp, int64_t j0, int64_t nc,
                                                            int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; i += MR) {
        const int mr = r1 - i < MR ? (int)(r1 - i) : MR;
        pack_b(terms, nterms, i, mr, bp);
        for (int64_t j = j0, p = 0; j < j0 + nc; j += NR, p++) {
            vf c[MR][NV];
            products(ap + p * rank * NR, bp, rank, c);
            const int64_t nr = j0 + nc - j < NR ? j0 + nc - j : NR;
            if (mr == MR && nr == NR) {
                for (int q = 0; q < MR; q++) add_row(dt, w, out, (i + q) * n + j, c[q]);
            } else { /* an edge of the matrix: the tile was computed whole (zero padded), only part is kept */
                float tile[MR][NR];
                for (int q = 0; q < MR; q++)
                    for (int v = 0; v < NV; v++) *(vf_u *)&tile[q][VL * v] = c[q][v];
                for (int q = 0; q < mr; q++)
                    for (int64_t jj = 0; jj < nr; jj++) {
                        const int64_t at = (i + q) * n + j + jj;
                        store1(dt, out, at, load1(dt, w, at) + tile[q][jj]);
                    }
            }
        }
    }
}

typedef struct {
    const void *w;
    void *out;
    int64_t m, n, dtype, nterms;
    const quiver_term *terms;
} quiver_job;

/* What one thread does of a call. Concatenation: its share of the rows of every job. Products: chunks of
 * rows taken in turn from the shared counter `next`, so that a core running slower (another tenant on
 * it, say) simply takes fewer; `failed` when it could not. */
typedef struct {
    const void *jobs;
    int64_t njobs, *next;
    int t, nthreads, failed;
} slice;

static inline void share(int64_t rows, int64_t unit, const slice *s, int64_t *r0, int64_t *r1) {
    const int64_t units = (rows + unit - 1) / unit;
    *r0 = units * s->t / s->nthreads * unit;
    *r1 = units * (s->t + 1) / s->nthreads * unit;
    if (*r1 > rows) *r1 = rows;
}

/* Rows a thread takes at a time: 8 tiles (a fraction of a millisecond of work). */
#define CHUNK_ROWS (8 * MR)

/* A buffer of at least `floats` floats, 64-byte aligned, grown as needed; 0 when memory is short. */
static float *room_for(float **buf, int64_t *room, int64_t floats) {
    if (floats > *room) {
        free(*buf);
        *room = (floats + 15) / 16 * 16;
        *buf = aligned_alloc(64, sizeof(float) * *room);
        if (!*buf) *room = 0;
    }
    return *buf;
}

static void *add_slice(void *arg) {
    slice *s = arg;
    const quiver_job *jobs = s->jobs;
    float *ap = 0, *bp = 0;
    int64_t a_room = 0, b_room = 0;
    int64_t J = 0, before = 0; /* the job of the chunk taken last, and the number of chunks of the jobs before it */
    int64_t packed = -1;       /* the job whose A is packed whole in ap */
    for (;;) {
        const int64_t chunk = __atomic_fetch_add(s->next, 1, __ATOMIC_RELAXED); /* increasing: jobs in order */
        while (J < s->njobs && chunk >= before + (jobs[J].m + CHUNK_ROWS - 1) / CHUNK_ROWS)
            before += (jobs[J++].m + CHUNK_ROWS - 1) / CHUNK_ROWS;
        if (J >= s->njobs) break;
        const quiver_job *jb = jobs + J;
        const int64_t r0 = (chunk - before) * CHUNK_ROWS, r1 = r0 + CHUNK_ROWS < jb->m ? r0 + CHUNK_ROWS : jb->m;
        int64_t rank = 0;
        for (int64_t t = 0; t < jb->nterms; t++) rank += jb->terms[t].r;
        /* columns a block: as many whole panels as A_BLOCK_BYTES holds (one at least), all of n if fewer */
        int64_t cols = A_BLOCK_BYTES / (int64_t)sizeof(float) / (rank > 0 ? rank : 1) / NR * NR;
        if (cols < NR) cols = NR;
        if (cols > (jb->n + NR - 1) / NR * NR) cols = (jb->n + NR - 1) / NR * NR;
        if (!room_for(&ap, &a_room, rank * cols + 1) || !room_for(&bp, &b_room, rank * MR + 1)) {
            s->failed = 1; /* no memory for the packed factors (a few MB at most) */
            break;
        }
        const int whole = cols >= jb->n; /* then A is packed once per job, else each block for each chunk */
        for (int64_t j0 = 0; j0 < jb->n; j0 += cols) {
            const int64_t nc = jb->n - j0 < cols ? jb->n - j0 : cols;
            if (!whole || packed != J) pack_a(jb->terms, jb->nterms, rank, jb->n, j0, nc, ap);
            packed = whole ? J : -1;
            switch (jb->dtype) {
            case BF16: add_block(BF16, jb->w, jb->out, jb->n, jb->terms, jb->nterms, rank, ap, bp, j0, nc, r0, r1); break;
#if HAVE_F16
            case F16: add_block(F16, jb->w, jb->out, jb->n, jb->terms, jb->nterms, rank, ap, bp, j0, nc, r0, r1); break;
#endif
            default: add_block(F32, jb->w, jb->out, jb->n, jb->terms, jb->nterms, rank, ap, bp, j0, nc, r0, r1); break;
            }
        }
    }
    free(ap);
    free(bp);
    return 0;
}

/* For a GEMM library to do the product instead: the terms concatenated in the weight's dtype,
 * b_out = [s_1 B_1 | ... | s_K B_K] (m x rank) and a_out = [A_1; ...; A_K] (rank x n), each element
 * computed in fp32 and rounded once. */
typedef struct {
    void *b_out;
    void *a_out;
    int64_t m, n, dtype, nterms;
    const quiver_term *terms;
} quiver_concat_job;

static void *concat_slice(void *arg) {
    const slice *s = arg;
    for (int64_t J = 0; J < s->njobs; J++) {
        const quiver_concat_job *jb = (const quiver_concat_job *)s->jobs + J;
        const int dt = (int)jb->dtype;
        int64_t rank = 0, r0, r1;
        for (int64_t t = 0; t < jb->nterms; t++) rank += jb->terms[t].r;
        share(jb->m, 1, s, &r0, &r1);
        for (int64_t i = r0; i < r1; i++) {
            int64_t col = i * rank;
            for (const quiver_term *t = jb->terms; t < jb->terms + jb->nterms; t++)
                for (int64_t k = 0; k < t->r; k++) store1(dt, jb->b_out, col++, t->scale * t->b[i * t->b_row + k * t->b_col]);
        }
        share(rank, 1, s, &r0, &r1);
        const int64_t nv = jb->n - jb->n % VL;
        int64_t k0 = 0;
        for (const quiver_term *t = jb->terms; t < jb->terms + jb->nterms; k0 += t->r, t++)
            for (int64_t k = 0; k < t->r; k++) {
                if (k0 + k < r0 || k0 + k >= r1) continue;
                const float *src = t->a + k * jb->n;
                const int64_t row = (k0 + k) * jb->n;
                for (int64_t j = 0; j < nv; j += VL) storev(dt, jb->a_out, row + j, *(const vf_u *)(src + j));
                for (int64_t j = nv; j < jb->n; j++) store1(dt, jb->a_out, row + j, src[j]);
            }
    }
    return 0;
}

#define MAX_THREADS 256

/* worker over every job on nthreads threads (the caller's thread is one of them). */
static int run(void *(*worker)(void *), const void *jobs, int64_t njobs, int nthreads) {
    pthread_t threads[MAX_THREADS];
    slice slices[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    int64_t next = 0;
    for (int t = 0; t < nthreads; t++) slices[t] = (slice){jobs, njobs, &next, t, nthreads, 0};
    for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&threads[t], 0, worker, &slices[t]) == 0;
    worker(&slices[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(threads[t], 0);
        else
            worker(&slices[t]); /* no thread to be had: do its share here */
    }
    int failed = 0;
    for (int t = 0; t < nthreads; t++) failed |= slices[t].failed;
    return failed;
}

/* 0 when every job is done; nonzero when memory for the packed factors could not be had (some of
 * `out` may then be written, never W). */
int quiver_add_products(const quiver_job *jobs, int64_t njobs, int nthreads) {
    return run(add_slice, jobs, njobs, nthreads);
}

void quiver_concat(const quiver_concat_job *jobs, int64_t njobs, int nthreads) {
    (void)run(concat_slice, jobs, njobs, nthreads);
}
