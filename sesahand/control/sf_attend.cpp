// SF's CPU attention kernel: softmax(q k^T / sqrt(d)) v per head, and the attention map's
// aggregate for hierarchical structural fusion, in one pass over the logits (docs/method.md,
// "SF on the CPU"). Compiled at first use by sesahand/control/native.py, loaded with ctypes;
// sesahand/control/fusion.py (_chunk_maps) is the reference it is tested against.
//
// Work items are (batch b, block of R query rows); one call runs items [item0, item1) on the
// calling thread (the caller runs one call per thread, on disjoint items, each with its own
// scratch and aggregate). Per item and head: logits S = q kt (kt is pre-scaled by
// log2(e) / sqrt(d), so the softmax is base 2), row softmax in place (unnormalised
// probabilities and 1 / row sum), out = P v / row sum, and the map's contribution:
//   tokens (gate == 0): the head-summed map hs of the item's rows; after the heads, each row
//     is max-pooled over the keys of each common-grid cell and max-reduced into
//     agg[b][cell of the row][cell of the keys]  (agg: B x G x G);
//   gate (gate == 1): the map summed over heads and rows, per key: agg[b][key]  (agg: B x Np).
// Layouts (float32, contiguous): q (B, H, N, d); kt (B, H, d, Np) with Np = N rounded up to
// 16, padding zero; v and out (B, H, N, dp) with dp = d rounded up to 16, v's padding zero;
// cells (N,) int32, the common-grid cell of each token; scratch 2 R Np + G + R floats.
// Uses GCC/Clang vector extensions (16 floats; the compiler maps them to AVX-512, AVX2, NEON).

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace {

constexpr int L = 16;  // floats per vector
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
inline vf splat(float x) { return vf{} + x; }

// 2^x for x <= 0 (Cephes exp2f: round to the nearest integer n, a degree-6 polynomial for 2^f
// on f in [-0.5, 0.5], 2^n from the exponent bits; about 2 ulp); 0 below 2^-126 and for -inf.
inline vf exp2_nonpositive(vf x) {
    vi keep = x >= -126.0f;
    x = keep ? x : splat(-126.0f);
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    vf n = (x + magic) - magic;
    vf f = x - n;
    vf p = splat(1.535336188319500e-4f);
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;  // 2^n
    return (vf)((vi)(p * (vf)bits) & keep);  // vector casts reinterpret the bits
}

// S[r][c0 .. c0 + 16 CT) for RT rows: sum over k of q[r][k] kt[k][c].
template <int RT, int CT>
inline void logits_tile(const float* q, int d, const float* kt, int np, float* s, int c0) {
    vf acc[RT][CT] = {};
    for (int k = 0; k < d; ++k) {
        vf kv[CT];
        for (int j = 0; j < CT; ++j) kv[j] = load(kt + (size_t)k * np + c0 + j * L);
        for (int r = 0; r < RT; ++r) {
            vf qv = splat(q[(size_t)r * d + k]);
            for (int j = 0; j < CT; ++j) acc[r][j] += qv * kv[j];
        }
    }
    for (int r = 0; r < RT; ++r)
        for (int j = 0; j < CT; ++j) store(s + (size_t)r * np + c0 + j * L, acc[r][j]);
}

template <int RT>
inline void logits_rows(const float* q, int d, const float* kt, int np, float* s) {
    int c = 0;
    for (; c + 4 * L <= np; c += 4 * L) logits_tile<RT, 4>(q, d, kt, np, s, c);
    for (; c < np; c += L) logits_tile<RT, 1>(q, d, kt, np, s, c);
}

// out[r][col .. col + 16 NT) (+)= sum over keys c in [k0, k1) of P[r][c] v[c][...], TR rows.
template <int TR, int NT>
inline void values_tile(const float* p, int np, const float* v, int dp, float* out, int col,
                        int k0, int k1) {
    vf acc[TR][NT];
    for (int r = 0; r < TR; ++r)
        for (int j = 0; j < NT; ++j)
            acc[r][j] = k0 == 0 ? vf{} : load(out + (size_t)r * dp + col + j * L);
    for (int c = k0; c < k1; ++c) {
        vf vv[NT];
        for (int j = 0; j < NT; ++j) vv[j] = load(v + (size_t)c * dp + col + j * L);
        for (int r = 0; r < TR; ++r) {
            vf pr = splat(p[(size_t)r * np + c]);
            for (int j = 0; j < NT; ++j) acc[r][j] += pr * vv[j];
        }
    }
    for (int r = 0; r < TR; ++r)
        for (int j = 0; j < NT; ++j) store(out + (size_t)r * dp + col + j * L, acc[r][j]);
}

template <int TR>
inline void values_rows(const float* p, int np, const float* v, int dp, float* out, int k0, int k1) {
    int col = 0;
    for (; col + 3 * L <= dp; col += 3 * L) values_tile<TR, 3>(p, np, v, dp, out, col, k0, k1);
    if (dp - col == 2 * L) values_tile<TR, 2>(p, np, v, dp, out, col, k0, k1);
    else if (dp - col == L) values_tile<TR, 1>(p, np, v, dp, out, col, k0, k1);
}

constexpr int KEY_BLOCK = 128;  // keys per pass of the value product (v block stays in L1/L2)

}  // namespace

extern "C" void sf_attend(const float* q, const float* kt, const float* v, float* out,
                          int H, int N, int d, int dp, int gate, const int32_t* cells,
                          int G, int R, int64_t item0, int64_t item1, float* scratch,
                          float* agg) {
    const int np = (N + L - 1) / L * L;
    const int64_t blocks = (N + R - 1) / R;
    float* s = scratch;                      // R x np: logits, then unnormalised probabilities
    float* hs = scratch + (size_t)R * np;    // R x np: head-summed map (tokens), column sums (gate)
    float* rowmax = hs + (size_t)R * np;     // G: one row pooled over key cells (tokens)
    float* inv = rowmax + G;                 // R: 1 / row sum of the probabilities
    for (int64_t item = item0; item < item1; ++item) {
        const int b = (int)(item / blocks);
        const int r0 = (int)(item % blocks) * R;
        const int rows = N - r0 < R ? N - r0 : R;
        // tokens: the rows' head-summed map; gate: the item's column sums (then added to agg,
        // so agg's running sums take one addition per item, not one per row and head)
        for (size_t i = 0; i < (gate ? (size_t)np : (size_t)rows * np); i += L) store(hs + i, vf{});
        for (int h = 0; h < H; ++h) {
            const size_t bh = (size_t)b * H + h;
            const float* qh = q + (bh * N + r0) * d;
            const float* kh = kt + bh * d * np;
            const float* vh = v + bh * N * dp;
            float* oh = out + (bh * N + r0) * dp;
            int r = 0;
            for (; r + 4 <= rows; r += 4) logits_rows<4>(qh + (size_t)r * d, d, kh, np, s + (size_t)r * np);
            for (; r < rows; ++r) logits_rows<1>(qh + (size_t)r * d, d, kh, np, s + (size_t)r * np);
            for (r = 0; r < rows; ++r) {  // softmax, base 2, in place
                float* row = s + (size_t)r * np;
                for (int c = N; c < np; ++c) row[c] = -INFINITY;
                vf m = splat(-INFINITY);
                for (int c = 0; c < np; c += L) {
                    vf x = load(row + c);
                    m = m > x ? m : x;
                }
                float mx = m[0];
                for (int j = 1; j < L; ++j) mx = m[j] > mx ? m[j] : mx;
                vf sum = {};
                for (int c = 0; c < np; c += L) {
                    vf e = exp2_nonpositive(load(row + c) - mx);
                    store(row + c, e);
                    sum += e;
                }
                float total = 0.0f;
                for (int j = 0; j < L; ++j) total += sum[j];
                inv[r] = 1.0f / total;
            }
            for (int k0 = 0; k0 < N; k0 += KEY_BLOCK) {
                const int k1 = N - k0 < KEY_BLOCK ? N : k0 + KEY_BLOCK;
                for (r = 0; r + 8 <= rows; r += 8)
                    values_rows<8>(s + (size_t)r * np, np, vh, dp, oh + (size_t)r * dp, k0, k1);
                for (; r < rows; ++r)
                    values_rows<1>(s + (size_t)r * np, np, vh, dp, oh + (size_t)r * dp, k0, k1);
            }
            for (r = 0; r < rows; ++r) {
                const vf scale = splat(inv[r]);
                float* orow = oh + (size_t)r * dp;
                for (int c = 0; c < dp; c += L) store(orow + c, load(orow + c) * scale);
                const float* prow = s + (size_t)r * np;
                float* target = gate ? hs : hs + (size_t)r * np;
                for (int c = 0; c < np; c += L) store(target + c, load(target + c) + load(prow + c) * scale);
            }
        }
        if (gate) {
            float* target = agg + (size_t)b * np;
            for (int c = 0; c < np; c += L) store(target + c, load(target + c) + load(hs + c));
        } else {
            for (int r = 0; r < rows; ++r) {
                const float* row = hs + (size_t)r * np;
                for (int g = 0; g < G; ++g) rowmax[g] = 0.0f;
                for (int c = 0; c < N; ++c) {
                    float x = row[c];
                    float& m = rowmax[cells[c]];
                    m = x > m ? x : m;
                }
                float* target = agg + ((size_t)b * G + cells[r0 + r]) * G;
                for (int g = 0; g < G; ++g) target[g] = rowmax[g] > target[g] ? rowmax[g] : target[g];
            }
        }
    }
}
