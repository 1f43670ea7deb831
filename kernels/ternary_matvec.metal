// out[m, n] = sum_k x[m, k] * W[n, k] for a ternary weight W = scale * t, t in {-1, 0, +1}, M <= 8.
//
// Inputs (MLX writes the signature): x [M, K] (T), weight [N, K/16] uint32 (2-bit codes c = t + 1,
// 16 per word from the least significant bits up), scales [N, K/GROUP] (any float type). Output
// out [M, N] (T). MLX passes an input of fewer than 8 elements as `const constant` (a few scales), so
// inputs are indexed from their own pointer, never aliased by a `const device` one.
// Template: T, GROUP (weights per scale along K; a multiple of 32, K for one scale per row).
// Launch: grid (32, N, 1), threadgroup (32, R, 1): one simdgroup of 32 lanes per output row.
// Lane l walks the chunks of 32 weights (2 words) l, l + 32, ...: it sums t * x over the chunk in
// float32, multiplies by the chunk's scale and adds that to its partial; simd_sum adds the partials.
const int M = x_shape[0];
const int K = x_shape[1];
const int N = weight_shape[0];
const uint row = thread_position_in_grid.y;
const uint lane = thread_index_in_simdgroup;

const size_t codes = size_t(row) * (K / 16);
const size_t row_scales = size_t(row) * (K / GROUP);
float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
for (int chunk = lane; chunk < K / 32; chunk += 32) {
  const uint words[2] = {weight[codes + 2 * chunk], weight[codes + 2 * chunk + 1]};
  const size_t xs = size_t(chunk) * 32;
  float part[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < 32; ++i) {
    const float t = float(int((words[i / 16] >> (2 * (i % 16))) & 3u) - 1);
    for (int m = 0; m < M; ++m) {
      part[m] += t * float(x[xs + m * K + i]);
    }
  }
  const float scale = float(scales[row_scales + (chunk * 32) / GROUP]);
  for (int m = 0; m < M; ++m) {
    acc[m] += scale * part[m];
  }
}

for (int m = 0; m < M; ++m) {
  const float total = simd_sum(acc[m]);
  if (lane == 0) {
    out[m * N + row] = static_cast<T>(total);
  }
}
