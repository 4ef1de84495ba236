// A hand-written CPU top-k, kept as the measured alternative to `sae_core.saes.sparse_ops.topk_rows` (issue 21):
// `benchmarks/topk_kernels.py` compiles it (g++ -O3 -march=native) and times it beside PyTorch's top-k.
// It was not adopted: inside a training step it is no faster than the grouped PyTorch top-k (benchmarks/README.md).
#include <algorithm>
#include <cstdint>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {
struct Entry { float v; int64_t i; };
}

// Top k of each row r in [r0, r1) of a row-major (n, d) float32 block, unordered, into out_v / out_i (n, k).
// Pass 1 takes the maxima of k disjoint column sets (columns j, j + k, j + 2k, ...): k distinct elements, so their
// minimum t is at most the row's k-th largest value. Pass 2 keeps the elements >= t (the row is in cache by then)
// and ranks those. Rows holding a NaN are flagged in nan_rows and left unwritten (torch.topk ranks NaN first; this
// does not); returns how many. Needs d >= k.
extern "C" int64_t sae_topk_rows(const float* pre, int64_t r0, int64_t r1, int64_t d, int64_t k,
                                 float* out_v, int64_t* out_i, uint8_t* nan_rows) {
    std::vector<float> cmax(k);
    std::vector<Entry> cand;
    cand.reserve(8 * k);
    const int64_t planes = d / k;
    int64_t n_nan = 0;
    for (int64_t r = r0; r < r1; ++r) {
        const float* __restrict__ row = pre + r * d;
        float* __restrict__ m = cmax.data();
        int bad = 0;
        for (int64_t j = 0; j < k; ++j) { m[j] = row[j]; bad |= row[j] != row[j]; }
        for (int64_t p = 1; p < planes; ++p) {
            const float* __restrict__ q = row + p * k;
            for (int64_t j = 0; j < k; ++j) { const float v = q[j]; bad |= v != v; m[j] = v > m[j] ? v : m[j]; }
        }
        for (int64_t j = planes * k; j < d; ++j) bad |= row[j] != row[j];
        nan_rows[r] = bad != 0;
        if (bad) { ++n_nan; continue; }
        float t = m[0];
        for (int64_t j = 1; j < k; ++j) t = m[j] < t ? m[j] : t;
        cand.clear();
        int64_t j = 0;
#ifdef __AVX2__
        const __m256 tv = _mm256_set1_ps(t);
        for (; j + 8 <= d; j += 8) {
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), tv, _CMP_GE_OQ));
            while (mask) {
                const int b = __builtin_ctz(mask);
                cand.push_back({row[j + b], j + b});
                mask &= mask - 1;
            }
        }
#endif
        for (; j < d; ++j) if (row[j] >= t) cand.push_back({row[j], j});
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), [](const Entry& a, const Entry& b) { return a.v > b.v; });
        float* ov = out_v + r * k;
        int64_t* oi = out_i + r * k;
        for (int64_t i = 0; i < k; ++i) { ov[i] = cand[i].v; oi[i] = cand[i].i; }
    }
    return n_nan;
}
