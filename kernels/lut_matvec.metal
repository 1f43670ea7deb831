// out[m, n] = sum_k x[m, k] * W[n, k] for a palettized (lut) weight, M <= 8 rows of x.
//
// Inputs (MLX writes the signature): x [M, K] (T), weight [N, K*BITS/32] uint32 (codes as one
// little-endian bit stream per row), lut [N/GROUP, 2^BITS] (any float type), scales [N, 1] (read only
// when HAS_SCALE). Output out [M, N] (T). Template: T, BITS (2, 3, 4), GROUP (rows per palette), HAS_SCALE.
// MLX passes an input of fewer than 8 elements as `const constant` (a small lut, a few scales), so
// inputs are indexed from their own pointer, never aliased by a `const device` one.
// Launch: grid (32, N, 1), threadgroup (32, R, 1): one simdgroup of 32 lanes per output row.
// Lane l walks the chunks of 32 codes (BITS words each) l, l + 32, l + 64, ... accumulating in
// float32 in that order; simd_sum then adds the 32 lane partials.
const int M = x_shape[0];
const int K = x_shape[1];
const int N = weight_shape[0];
const uint row = thread_position_in_grid.y;
const uint lane = thread_index_in_simdgroup;
constexpr int ENTRIES = 1 << BITS;
constexpr uint MASK = ENTRIES - 1;

float table[ENTRIES];
const size_t palette = size_t(row / GROUP) * ENTRIES;
for (int e = 0; e < ENTRIES; ++e) {
  table[e] = float(lut[palette + e]);
}

const size_t codes = size_t(row) * (K * BITS / 32);
float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
for (int chunk = lane; chunk < K / 32; chunk += 32) {
  uint words[BITS];
  for (int j = 0; j < BITS; ++j) {
    words[j] = weight[codes + chunk * BITS + j];
  }
  const size_t xs = size_t(chunk) * 32;
  for (int i = 0; i < 32; ++i) {
    const int bit = i * BITS;
    const int word = bit / 32;
    const int shift = bit % 32;
    uint code = words[word] >> shift;
    if (shift + BITS > 32) {
      code |= words[word + 1] << (32 - shift);
    }
    const float w = table[code & MASK];
    for (int m = 0; m < M; ++m) {
      acc[m] += w * float(x[xs + m * K + i]);
    }
  }
}

const float row_scale = HAS_SCALE ? float(scales[row]) : 1.0f;
for (int m = 0; m < M; ++m) {
  const float total = simd_sum(acc[m]);
  if (lane == 0) {
    out[m * N + row] = static_cast<T>(total * row_scale);
  }
}
