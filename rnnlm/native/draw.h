/* The draw of rnnlm/native/generate.c: the next token from a row of logits, as rnnlm/sample.py's `choose`
 * draws it (temperature, top-k, top-p, the uniform draw), and the vectorisable exp it and the cells use.
 * Included by generate.c (one translation unit, so that the compiler inlines across them).
 */
#ifndef RNNLM_DRAW_H
#define RNNLM_DRAW_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp(x) for x <= 0, in a form the compiler turns into vector instructions (libm's expf is one value at
 * a time): x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by its Taylor series to r^7 / 7! (the next term is
 * below 1e-8 of it), times 2^n set in the exponent bits. Within one unit in the last place of the exact
 * value (0.93 at most over [-87, 0] in steps of 1e-5; libm's expf 0.50); below -87 (where floats run out
 * of exponent) it is 0. */
static inline float exp_nonpositive(float x) {
    float clamped = x < -87.0f ? -87.0f : x;
    float n = floorf(clamped * 1.44269504f + 0.5f);
    float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f; /* ln 2 in two parts: exact n times the first */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale = *(float *)&bits; /* built with -fno-strict-aliasing; memcpy here stops the vectorizer */
    return x < -87.0f ? 0.0f : p * scale;
}

#define BLOCK 256

/* A 64-bit key whose order is the candidates' ranking: the larger logit first (its bits made monotonic),
 * the lower id first between equal logits (the id reversed in the low half). A strict order, so the
 * candidates come in the same order on every machine. */
static inline uint64_t rank_key(float logit, int32_t id) {
    uint32_t bits = *(uint32_t *)&logit;
    bits = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
    return (uint64_t)bits << 32 | (uint32_t)(INT32_MAX - id);
}

static inline int32_t key_id(uint64_t key) { return INT32_MAX - (int32_t)(key & 0xFFFFFFFFu); }

/* Hoare's partition of keys[0, n) (distinct) around the middle one, the larger first: afterwards every key
 * of [0, *j] is above or equal to every key of [*i, n), and those between equal the pivot. */
static void partition(uint64_t *keys, int n, int *i_out, int *j_out) {
    uint64_t pivot = keys[n / 2];
    int i = 0, j = n - 1;
    while (i <= j) {
        while (keys[i] > pivot) i++;
        while (keys[j] < pivot) j--;
        if (i <= j) {
            uint64_t t = keys[i];
            keys[i++] = keys[j];
            keys[j--] = t;
        }
    }
    *i_out = i, *j_out = j;
}

/* keys[0, n) from the largest down: quicksort (the smaller side first, so the stack stays short),
 * insertion sort below 24 keys. The keys are distinct. */
static void sort_descending(uint64_t *keys, int n) {
    while (n > 24) {
        int i, j;
        partition(keys, n, &i, &j);
        if (j + 1 < n - i) { /* [0, j] and [i, n): sort the smaller, loop on the larger */
            sort_descending(keys, j + 1);
            keys += i;
            n -= i;
        } else {
            sort_descending(keys + i, n - i);
            n = j + 1;
        }
    }
    for (int i = 1; i < n; i++) {
        uint64_t key = keys[i];
        int j = i;
        for (; j > 0 && key > keys[j - 1]; j--) keys[j] = keys[j - 1];
        keys[j] = key;
    }
}

#define DIGIT 11 /* bits a radix pass sorts by: 2,048 buckets */

/* Every token's key, best first, into ranked (V entries; scratch: V more): a radix sort by the logit's
 * 32 bits, 11 at a time from the lowest, stable, of the keys in id order, so that equal logits keep the
 * lower id first as the ranking wants. A pass whose digit is the same for every token is skipped. For
 * thousands of keys this beats a comparison sort, whose branches a random order mispredicts. */
static void rank_all(const uint64_t *keys, int V, uint64_t *ranked, uint64_t *scratch) {
    enum { BUCKETS = 1 << DIGIT };
    memcpy(ranked, keys, sizeof *keys * (size_t)V);
    uint64_t *from = ranked, *to = scratch;
    for (int shift = 32; shift < 64; shift += DIGIT) {
        int start[BUCKETS + 1] = {0};
        for (int v = 0; v < V; v++) start[BUCKETS - ((from[v] >> shift) & (BUCKETS - 1))]++; /* 0: the largest */
        int busy = 0;
        for (int d = 1; d <= BUCKETS; d++) busy += start[d] > 0;
        if (busy == 1) continue;
        for (int d = 0; d < BUCKETS; d++) start[d + 1] += start[d];
        for (int v = 0; v < V; v++) to[start[BUCKETS - 1 - ((from[v] >> shift) & (BUCKETS - 1))]++] = from[v];
        uint64_t *swap = from;
        from = to;
        to = swap;
    }
    if (from != ranked) memcpy(ranked, from, sizeof *keys * (size_t)V);
}

/* The k best-ranked of keys[0, V), best first, into best (V entries of room): for a few dozen, one pass
 * keeping them in order; for more, a quickselect (Hoare) of the k largest on a copy, then a sort. */
static void best_k(const uint64_t *keys, int V, int k, uint64_t *best) {
    if (k <= 64) {
        int n = 0;
        for (int start = 0; start < V; start += 16) {
            int stop = start + 16 < V ? start + 16 : V, any = n < k;
            if (!any) { /* most keys are below the k-th best so far: look at 16 at once first */
                uint64_t least = best[k - 1];
                for (int v = start; v < stop; v++) any |= keys[v] > least;
            }
            for (int v = start; any && v < stop; v++) {
                uint64_t key = keys[v];
                if (n == k && key <= best[k - 1]) continue;
                int j = n < k ? n++ : k - 1;
                for (; j > 0 && key > best[j - 1]; j--) best[j] = best[j - 1];
                best[j] = key;
            }
        }
        return;
    }
    memcpy(best, keys, sizeof *keys * (size_t)V);
    int low = 0, high = k < V ? V - 1 : 0;
    while (low < high) { /* the k largest end up in best[0, k), in no order */
        int i, j;
        partition(best + low, high - low + 1, &i, &j);
        if (k - 1 <= low + j) high = low + j;
        else if (k - 1 >= low + i) low += i;
        else break;
    }
    sort_descending(best, k);
}

/* The index drawn from the distribution rnnlm/sample.py's `distribution` gives (softmax of logits over
 * temperature, restricted to the top_k best-ranked tokens when 0 < top_k < V, then to the top_p nucleus:
 * the fewest best-ranked tokens holding that mass) by the uniform draw u, as its `_inverse_cdf` draws:
 * the first token, in the candidates' order, whose running sum of weights passes u times their total.
 * The argmax at temperature 0. Sums are in double (in float, a token rarer than 3e-8 would add nothing
 * once the sum passes 0.5); with every token a candidate, block totals first, then the running sum within
 * the block that holds u times the total. */
static int64_t draw(const float *logits, int V, double temperature, int top_k, double top_p, double u,
                    float *weights, double *blocks, uint64_t *keys, uint64_t *best) { /* best: 2 V entries */
    float top = logits[0];
#pragma omp simd reduction(max : top)
    for (int v = 0; v < V; v++) top = logits[v] > top ? logits[v] : top;
    if (temperature == 0.0) {
        for (int v = 0; v < V; v++)
            if (logits[v] == top) return v;
        return 0; /* NaN logits */
    }
    float scale = (float)(1.0 / temperature);
#pragma omp simd
    for (int v = 0; v < V; v++) weights[v] = exp_nonpositive((logits[v] - top) * scale);
    int count = (V + BLOCK - 1) / BLOCK;
    double total = 0.0;
    for (int k = 0; k < count; k++) {
        int stop = (k + 1) * BLOCK < V ? (k + 1) * BLOCK : V;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int v = k * BLOCK; v < stop; v++) sum += (double)weights[v];
        blocks[k] = sum;
        total += sum;
    }
    if ((top_k <= 0 || top_k >= V) && top_p >= 1.0) {
        double point = u * total, running = 0.0;
        for (int k = 0; k < count; k++) {
            if (running + blocks[k] > point || k == count - 1) {
                int stop = (k + 1) * BLOCK < V ? (k + 1) * BLOCK : V;
                for (int v = k * BLOCK; v < stop; v++) {
                    running += weights[v];
                    if (running > point) return v;
                }
                return stop - 1;
            }
            running += blocks[k];
        }
        return V - 1;
    }
    for (int v = 0; v < V; v++) keys[v] = rank_key(logits[v], v);
    int n; /* candidates, best first, in best[0, n) */
    if (top_k > 0 && top_k < V) {
        n = top_k;
        best_k(keys, V, n, best);
        total = 0.0; /* the distribution is renormalised over the k */
        for (int i = 0; i < n; i++) total += weights[key_id(best[i])];
    } else { /* the nucleus alone: within the best 64, or 512, or else within all of them ranked */
        const int sizes[] = {64, 512, V};
        for (int round = 0;; round++) {
            n = sizes[round] < V ? sizes[round] : V;
            if (n < V) best_k(keys, V, n, best);
            else rank_all(keys, V, best, best + V);
            double mass = 0.0;
            for (int i = 0; i < n; i++) mass += weights[key_id(best[i])];
            if (n == V || mass >= top_p * total) break;
        }
    }
    if (top_p < 1.0) { /* keep a candidate while the mass before it is below top_p */
        double before = 0.0, limit = top_p * total;
        int kept = 0;
        while (kept < n && before < limit) before += weights[key_id(best[kept++])];
        n = kept;
    }
    double kept_total = 0.0;
    for (int i = 0; i < n; i++) kept_total += weights[key_id(best[i])];
    double point = u * kept_total, running = 0.0;
    for (int i = 0; i < n; i++) {
        running += weights[key_id(best[i])];
        if (running > point) return key_id(best[i]);
    }
    return key_id(best[n - 1]);
}

#endif
