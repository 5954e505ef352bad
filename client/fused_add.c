/* The merge kernel (client/fused.py builds and calls it). Two entry points, each over many weights in
 * one call, rows split between threads (pthreads):
 *
 * quiver_add_products: out = W + sum_t s_t B_t A_t in one pass over W. W and out: m x n, fp32, bf16
 * or fp16, row-major. Each B_t (m x r_t, any strides) and A_t (r_t x n, rows contiguous) is fp32 and
 * read where it lies: the adapters' own factors, never concatenated or scaled copies. Each element of
 * out is W[i, j] + sum_t sum_k s_t B_t[i, k] A_t[k, j], accumulated in fp32 registers and rounded
 * once to W's dtype (round to nearest even, as torch rounds). W is read once and out written once:
 * no product matrix is ever stored, so a low-rank merge runs at the speed of memory rather than at
 * the speed of a GEMM that writes its result and then adds it.
 *
 * quiver_concat: for the weights a GEMM library multiplies instead, the terms concatenated in the
 * weight's dtype, [s_1 B_1 | ... | s_K B_K] and [A_1; ...; A_K], in one pass.
 *
 * Written with GCC/Clang vector extensions (one vector = one register of the widest unit), so the
 * same source compiles to AVX-512, AVX2 or NEON under -march=native.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static inline void storev(int dt, void *p, int64_t i, vf f) {
    if (dt == BF16) {
        vu u = (vu)f;
        vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);
        rounded = (rounded & ~nan) | (((u >> 16) | 0x40u) & nan);
        *(vh_u *)((uint16_t *)p + i) = __builtin_convertvector(rounded, vh);
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

typedef struct {
    const float *b; /* B[i, k] = b[i * b_row + k * b_col] */
    const float *a; /* A[k, j] = a[k * n + j] */
    int64_t r, b_row, b_col;
    float scale;
} quiver_term;

/* Columns [j0, n) of row i, one element at a time. */
static inline void add_tail(int dt, const void *w, void *out, int64_t n, const quiver_term *terms, int64_t nterms,
                            int64_t i, int64_t j0) {
    for (int64_t j = j0; j < n; j++) {
        float acc = load1(dt, w, i * n + j);
        for (const quiver_term *t = terms; t < terms + nterms; t++)
            for (int64_t k = 0; k < t->r; k++) acc += t->scale * t->b[i * t->b_row + k * t->b_col] * t->a[k * n + j];
        store1(dt, out, i * n + j, acc);
    }
}

/* The register tile: TR rows by TV vectors of VL columns, TR * TV accumulators kept in registers while
 * the r rank-one updates stream through them (AVX-512 has 32 vector registers, AVX2 16). */
#ifndef TR
#define TR 4
#if defined(__AVX512F__)
#define TV 4
#else
#define TV 2
#endif
#endif
#define TN (VL * TV)

/* Rows [r0, r1) of out = W + sum_t s_t B_t A_t. For each tile of rows the scaled rows of every B_t are
 * first gathered side by side into bs (TR x rank): the innermost loop then only loads A, broadcasts
 * from L1 and does FMAs, whatever the strides of B and however many terms. */
static inline __attribute__((always_inline)) void add_rows(int dt, const void *w, void *out, int64_t n,
                                                           const quiver_term *terms, int64_t nterms, int64_t rank,
                                                           float *bs, int64_t r0, int64_t r1) {
    const int64_t nt = n - n % TN;
    int64_t i = r0;
    for (; i + TR <= r1; i += TR) {
        for (int q = 0; q < TR; q++) {
            float *row = bs + q * rank;
            for (const quiver_term *t = terms; t < terms + nterms; row += t->r, t++)
                for (int64_t k = 0; k < t->r; k++) row[k] = t->scale * t->b[(i + q) * t->b_row + k * t->b_col];
        }
        for (int64_t j = 0; j < nt; j += TN) {
            vf c[TR][TV];
            for (int q = 0; q < TR; q++)
                for (int v = 0; v < TV; v++) c[q][v] = loadv(dt, w, (i + q) * n + j + VL * v);
            const float *bk = bs;
            for (const quiver_term *t = terms; t < terms + nterms; t++) {
                for (int64_t k = 0; k < t->r; k++, bk++) {
                    vf ak[TV];
                    for (int v = 0; v < TV; v++) ak[v] = *(const vf_u *)(t->a + k * n + j + VL * v);
                    for (int q = 0; q < TR; q++)
                        for (int v = 0; v < TV; v++) c[q][v] += bk[q * rank] * ak[v];
                }
            }
            for (int q = 0; q < TR; q++)
                for (int v = 0; v < TV; v++) storev(dt, out, (i + q) * n + j + VL * v, c[q][v]);
        }
        for (int q = 0; q < TR; q++) add_tail(dt, w, out, n, terms, nterms, i + q, nt);
    }
    for (; i < r1; i++) add_tail(dt, w, out, n, terms, nterms, i, 0);
}

typedef struct {
    const void *w;
    void *out;
    int64_t m, n, dtype, nterms;
    const quiver_term *terms;
} quiver_job;

/* What one thread does of a call: its share of the rows of every job. */
typedef struct {
    const void *jobs;
    int64_t njobs;
    int t, nthreads;
} slice;

static inline void share(int64_t rows, int64_t unit, const slice *s, int64_t *r0, int64_t *r1) {
    const int64_t units = (rows + unit - 1) / unit;
    *r0 = units * s->t / s->nthreads * unit;
    *r1 = units * (s->t + 1) / s->nthreads * unit;
    if (*r1 > rows) *r1 = rows;
}

static void *add_slice(void *arg) {
    const slice *s = arg;
    float *bs = 0;
    int64_t room = 0;
    for (int64_t J = 0; J < s->njobs; J++) {
        const quiver_job *jb = (const quiver_job *)s->jobs + J;
        int64_t r0, r1;
        share(jb->m, TR, s, &r0, &r1);
        if (r0 >= r1) continue;
        int64_t rank = 0;
        for (int64_t t = 0; t < jb->nterms; t++) rank += jb->terms[t].r;
        if (TR * rank > room) {
            free(bs);
            room = TR * rank;
            bs = malloc(sizeof(float) * room);
            if (!bs) room = 0;
        }
        if (!bs) { /* no memory for the gathered rows: the plain loop needs none */
            for (int64_t i = r0; i < r1; i++) add_tail(jb->dtype, jb->w, jb->out, jb->n, jb->terms, jb->nterms, i, 0);
            continue;
        }
        switch (jb->dtype) {
        case BF16: add_rows(BF16, jb->w, jb->out, jb->n, jb->terms, jb->nterms, rank, bs, r0, r1); break;
#if HAVE_F16
        case F16: add_rows(F16, jb->w, jb->out, jb->n, jb->terms, jb->nterms, rank, bs, r0, r1); break;
#endif
        default: add_rows(F32, jb->w, jb->out, jb->n, jb->terms, jb->nterms, rank, bs, r0, r1); break;
        }
    }
    free(bs);
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

/* worker over every job, each job's rows split evenly between nthreads threads (the caller's thread is
 * one of them). */
static void run(void *(*worker)(void *), const void *jobs, int64_t njobs, int nthreads) {
    pthread_t threads[MAX_THREADS];
    slice slices[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    for (int t = 0; t < nthreads; t++) slices[t] = (slice){jobs, njobs, t, nthreads};
    for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&threads[t], 0, worker, &slices[t]) == 0;
    worker(&slices[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(threads[t], 0);
        else
            worker(&slices[t]); /* no thread to be had: do its share here */
    }
}

void quiver_add_products(const quiver_job *jobs, int64_t njobs, int nthreads) {
    run(add_slice, jobs, njobs, nthreads);
}

void quiver_concat(const quiver_concat_job *jobs, int64_t njobs, int nthreads) {
    run(concat_slice, jobs, njobs, nthreads);
}
