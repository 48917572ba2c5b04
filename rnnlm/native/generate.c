/* One token of a recurrent language model, end to end, for text generation: the embedding row, each
 * layer's cell, the output layer's logits and the draw, for `count` tokens in one call.
 *
 * Why C: per token, torch runs a dozen small kernels (one product per layer, the decoder's product, a
 * softmax, a running sum, a search), each with its own dispatch, allocation and thread wake-up; for the
 * PTB 2x200 model that is 4x the time of reading the 10.6 MB of weights the token needs (see
 * docs/benchmarks.md, "Sampling one stream against its bandwidth bound"). Here the threads stay inside
 * one parallel region for the whole call and meet at a barrier between the stages of a token.
 *
 * The equations are torch's one-step kernels' (torch.lstm_cell, gru_cell, rnn_tanh_cell, rnn_relu_cell),
 * which equal the cells of rnnlm/models/cells.py; the draw is rnnlm/sample.py's: the first token whose
 * running sum (in double) of exp((logit - max) / T) exceeds u times the total, u uniform in [0, 1),
 * or the argmax at T = 0. Every output of a product is summed by one thread in a fixed order, and the draw
 * by one thread, so the text does not depend on the number of threads.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_num_threads(void) { return 1; }
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "draw.h"

#define MAX_LAYERS 32

enum { CELL_LSTM = 0, CELL_GRU = 1, CELL_TANH = 2, CELL_RELU = 3 };

typedef struct {
    int32_t cell;                    /* CELL_* */
    int32_t layers;                  /* L <= MAX_LAYERS */
    int32_t vocab;                   /* V */
    int32_t embed;                   /* E: the first layer's input size */
    int32_t hidden[MAX_LAYERS];      /* H_k */
    const float *embedding;          /* (V, E) */
    const float *weight_ih[MAX_LAYERS]; /* W^T: (in_k, G H_k), torch's weight_ih transposed */
    const float *weight_hh[MAX_LAYERS]; /* U^T: (H_k, G H_k) */
    const float *bias_ih[MAX_LAYERS];   /* (G H_k) */
    const float *bias_hh[MAX_LAYERS];   /* (G H_k) */
    const float *decoder;            /* (H_top, V): the output layer's weight transposed */
    const float *decoder_bias;       /* (V) */
} Net;

static int gate_count(int cell) { return cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1; }

static int state_count(int cell) { return cell == CELL_LSTM ? 2 : 1; }

#define TILE 1024 /* columns of y a thread updates at a time: eight rows of A over a tile fill 32 KB */

/* y = b + x A for `batch` rows x (batch, in) and A (in, cols) row-major. Each thread takes a slice of the
 * columns, a tile at a time (for a batch; one sample takes the slice whole): for every sample it adds x_i
 * times row i of A, eight rows at a time (one load and store of y per eight rows of A), so a tile's eight
 * rows are read from memory once for the whole batch. Column j of y is summed over i in order by one
 * thread, so the numbers depend neither on the number of threads nor on the batch. */
static void product(const float *restrict A, const float *restrict bias, int in, int cols, int batch,
                    const float *restrict x, float *restrict y) {
    int parts = omp_get_num_threads(), width = ((cols + parts - 1) / parts + 15) / 16 * 16;
    int tile = batch > 1 ? TILE : width; /* one sample: the whole slice, in longer runs along each row */
    size_t c = (size_t)cols;
#pragma omp for schedule(static)
    for (int part = 0; part < parts; part++) {
        int end = (part + 1) * width < cols ? (part + 1) * width : cols;
        for (int start = part * width; start < end; start += tile) {
            int stop = start + tile < end ? start + tile : end;
            for (int b = 0; b < batch; b++)
                for (int j = start; j < stop; j++) y[b * c + j] = bias[j];
            int i = 0;
            for (; i + 8 <= in; i += 8) {
                const float *r = A + (size_t)i * c;
                for (int b = 0; b < batch; b++) {
                    float *restrict yb = y + b * c;
                    const float *xi = x + (size_t)b * in + i;
#pragma omp simd
                    for (int j = start; j < stop; j++)
                        yb[j] = (((((((yb[j] + xi[0] * r[j]) + xi[1] * r[c + j]) + xi[2] * r[2 * c + j]) +
                                    xi[3] * r[3 * c + j]) + xi[4] * r[4 * c + j]) + xi[5] * r[5 * c + j]) +
                                 xi[6] * r[6 * c + j]) + xi[7] * r[7 * c + j];
                }
            }
            for (; i < in; i++) {
                const float *row = A + (size_t)i * c;
                for (int b = 0; b < batch; b++) {
                    float *restrict yb = y + b * c;
                    float xi = x[(size_t)b * in + i];
#pragma omp simd
                    for (int j = start; j < stop; j++) yb[j] += xi * row[j];
                }
            }
        }
    }
}

/* The logistic function and tanh through exp_nonpositive, so that the cells' loops vectorize too: the
 * exponent is never positive, so neither overflows. Within 1.9e-7 of the exact values, relative (2 float
 * ulps; checked over [-20, 20] in steps of 1e-5). */
static inline float sigmoid(float x) {
    float e = exp_nonpositive(x < 0.0f ? x : -x);
    return x < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
}

static inline float tanh_(float x) {
    float e = exp_nonpositive(x < 0.0f ? 2.0f * x : -2.0f * x), t = (1.0f - e) / (1.0f + e);
    /* below |x| = 1/4, tanh's Taylor series to x^11 instead: there 1 - e loses the digits of a small x */
    float s = x * x, series = -1382.0f / 155925;
    series = series * s + 62.0f / 2835;
    series = series * s - 17.0f / 315;
    series = series * s + 2.0f / 15;
    series = series * s - 1.0f / 3;
    series = x + x * s * series;
    return s < 0.0625f ? series : x < 0.0f ? -t : t;
}

/* The cell's elementwise equations: the layer's new state from its products, into h (and c) in place. */
static void cell_update(int cell, int H, int batch, const float *pre_x, const float *pre_h, float *h, float *c) {
    int rows = gate_count(cell) * H;
    for (int b = 0; b < batch; b++) {
        const float *restrict px = pre_x + (size_t)b * rows, *restrict ph = pre_h + (size_t)b * rows;
        float *restrict hb = h + (size_t)b * H;
        if (cell == CELL_LSTM) { /* gate order i, f, g, o */
            float *restrict cb = c + (size_t)b * H;
#pragma omp for simd schedule(static) nowait
            for (int i = 0; i < H; i++) {
                float in_gate = sigmoid(px[i] + ph[i]), forget = sigmoid(px[H + i] + ph[H + i]);
                float memory = tanh_(px[2 * H + i] + ph[2 * H + i]), out = sigmoid(px[3 * H + i] + ph[3 * H + i]);
                float cell_value = forget * cb[i] + in_gate * memory;
                cb[i] = cell_value;
                hb[i] = out * tanh_(cell_value);
            }
        } else if (cell == CELL_GRU) { /* gate order r, z, n */
#pragma omp for simd schedule(static) nowait
            for (int i = 0; i < H; i++) {
                float reset = sigmoid(px[i] + ph[i]), update = sigmoid(px[H + i] + ph[H + i]);
                float fresh = tanh_(px[2 * H + i] + reset * ph[2 * H + i]);
                hb[i] = fresh + update * (hb[i] - fresh);
            }
        } else {
#pragma omp for simd schedule(static) nowait
            for (int i = 0; i < H; i++) {
                float pre = px[i] + ph[i];
                hb[i] = cell == CELL_TANH ? tanh_(pre) : (pre > 0.0f ? pre : 0.0f);
            }
        }
    }
#pragma omp barrier
}

/* Generate `count` tokens for `batch` samples.
 *   tokens (batch): each sample's input for the first step (the last token it read);
 *   state: every layer's state, layer after layer, each (batch, H_k) per state tensor (h, then c for
 *          the LSTM), updated in place;
 *   temperature, top_k (0: all), top_p (1: all): the distribution, as `draw` says;
 *   uniforms (count, batch): the draws (unused at temperature 0);
 *   out (count, batch): the tokens drawn; each is the input of the next step.
 * Returns 0, or 1 when out of memory. */
int rnnlm_generate(const Net *net, const int64_t *tokens, float *state, int count, int batch, double temperature,
                   int top_k, double top_p, const double *uniforms, int64_t *out, int threads) {
    int L = net->layers, V = net->vocab, G = gate_count(net->cell), widest = net->embed;
    for (int k = 0; k < L; k++) widest = net->hidden[k] > widest ? net->hidden[k] : widest;
    int top = net->hidden[L - 1], restricted = (top_k > 0 && top_k < V) || top_p < 1.0;
    size_t blocks_per_row = (size_t)(V + BLOCK - 1) / BLOCK, room = restricted ? 3 * (size_t)batch * V : 1;
    float *pre_x = malloc(sizeof(float) * (size_t)batch * G * widest);
    float *pre_h = malloc(sizeof(float) * (size_t)batch * G * widest);
    float *logits = malloc(sizeof(float) * (size_t)batch * V);
    float *weights = malloc(sizeof(float) * (size_t)batch * V);
    double *blocks = malloc(sizeof(double) * (size_t)batch * blocks_per_row);
    uint64_t *keys = malloc(sizeof(uint64_t) * room); /* per sample: the keys, the best, scratch; V each */
    float *inputs = malloc(sizeof(float) * (size_t)batch * net->embed);
    int64_t *current = malloc(sizeof(int64_t) * (size_t)batch);
    float *layer_state[MAX_LAYERS];
    int failed = !pre_x || !pre_h || !logits || !weights || !blocks || !keys || !inputs || !current;
    if (!failed) {
        size_t offset = 0;
        for (int k = 0; k < L; k++) {
            layer_state[k] = state + offset;
            offset += (size_t)state_count(net->cell) * batch * net->hidden[k];
        }
        memcpy(current, tokens, sizeof(int64_t) * (size_t)batch);
#pragma omp parallel num_threads(threads)
        for (int t = 0; t < count; t++) {
#pragma omp for schedule(static)
            for (int b = 0; b < batch; b++)
                memcpy(inputs + (size_t)b * net->embed, net->embedding + (size_t)current[b] * net->embed,
                       sizeof(float) * net->embed);
            const float *x = inputs;
            int in = net->embed;
            for (int k = 0; k < L; k++) {
                int H = net->hidden[k];
                float *h = layer_state[k], *c = net->cell == CELL_LSTM ? h + (size_t)batch * H : NULL;
                product(net->weight_ih[k], net->bias_ih[k], in, G * H, batch, x, pre_x);
                product(net->weight_hh[k], net->bias_hh[k], H, G * H, batch, h, pre_h);
                cell_update(net->cell, H, batch, pre_x, pre_h, h, c);
                x = h;
                in = H;
            }
            product(net->decoder, net->decoder_bias, top, V, batch, x, logits);
#pragma omp for schedule(static)
            for (int b = 0; b < batch; b++) {
                double u = temperature == 0.0 ? 0.0 : uniforms[(size_t)t * batch + b];
                uint64_t *mine = keys + (restricted ? 3 * (size_t)b * V : 0);
                current[b] = draw(logits + (size_t)b * V, V, temperature, top_k, top_p, u, weights + (size_t)b * V,
                                  blocks + b * blocks_per_row, mine, mine + V);
                out[(size_t)t * batch + b] = current[b];
            }
        }
    }
    free(pre_x), free(pre_h), free(logits), free(weights), free(blocks), free(keys), free(inputs);
    free(current);
    return failed;
}

/* exp (of min(x, 0)), the logistic function and tanh of n values as the kernel computes them: for tests. */
void rnnlm_functions(const float *x, float *exp_out, float *sigmoid_out, float *tanh_out, int n) {
    for (int i = 0; i < n; i++) {
        exp_out[i] = exp_nonpositive(x[i] < 0.0f ? x[i] : 0.0f);
        sigmoid_out[i] = sigmoid(x[i]);
        tanh_out[i] = tanh_(x[i]);
    }
}
