// Trains a tiny model built on mhsa::MultiheadSelfAttention, in C++ only, on a synthetic
// sequence task: for each position of a random token sequence, predict the largest token seen
// so far (a causal "running max", which needs attention to earlier positions). Exits non-zero
// if training does not clearly reduce the loss.
#include <torch/torch.h>

#include <mhsa/module.h>

#include <chrono>
#include <cstdio>

namespace {

constexpr int64_t kVocab = 16, kSeqLen = 12, kEmbed = 32, kHeads = 4, kBatch = 64;
constexpr int kSteps = 300;

// tokens -> embedding + position -> causal self-attention (+ residual) -> MLP -> logits.
struct TinyModelImpl : torch::nn::Module {
  TinyModelImpl()
      : token(register_module("token", torch::nn::Embedding(kVocab, kEmbed))),
        position(register_parameter("position", torch::randn({kSeqLen, kEmbed}) * 0.1)),
        attn(register_module(
            "attn", mhsa::MultiheadSelfAttention(mhsa::MultiheadSelfAttentionOptions(kEmbed, kHeads)
                                                     .batch_first(true)
                                                     .dropout(0.1)))),
        norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kEmbed})))),
        mlp(register_module(
            "mlp", torch::nn::Sequential(torch::nn::Linear(kEmbed, 4 * kEmbed), torch::nn::ReLU(),
                                         torch::nn::Linear(4 * kEmbed, kEmbed)))),
        head(register_module("head", torch::nn::Linear(kEmbed, kVocab))) {}

  torch::Tensor forward(const torch::Tensor& tokens) {  // (N, L) int64 -> (N, L, vocab)
    torch::Tensor h = token(tokens) + position;
    auto [a, weights] = attn(h, /*key_padding_mask=*/torch::Tensor(), /*need_weights=*/false,
                             /*attn_mask=*/torch::Tensor(), /*average_attn_weights=*/true,
                             /*is_causal=*/true);
    h = norm(h + a);
    h = h + mlp->forward(h);
    return head(h);
  }

  torch::nn::Embedding token;
  torch::Tensor position;
  mhsa::MultiheadSelfAttention attn;
  torch::nn::LayerNorm norm;
  torch::nn::Sequential mlp;
  torch::nn::Linear head;
};
TORCH_MODULE(TinyModel);

// A batch of random sequences and their running maxima.
std::pair<torch::Tensor, torch::Tensor> make_batch(int64_t batch) {
  const torch::Tensor tokens = torch::randint(kVocab, {batch, kSeqLen}, torch::kLong);
  const torch::Tensor targets = std::get<0>(tokens.cummax(/*dim=*/1));
  return {tokens, targets};
}

double loss_of(TinyModel& model, const torch::Tensor& tokens, const torch::Tensor& targets,
               torch::Tensor* accuracy = nullptr) {
  const torch::Tensor logits = model->forward(tokens);
  if (accuracy) *accuracy = (logits.argmax(-1) == targets).to(torch::kFloat).mean();
  return torch::nn::functional::cross_entropy(logits.reshape({-1, kVocab}), targets.reshape(-1))
      .item<double>();
}

}  // namespace

int main() {
  // The model and batches are tiny: one intra-op thread is fastest, and it keeps the run time
  // steady on a busy machine, where threads waiting at every op's barrier lose their time slice.
  torch::set_num_threads(1);
  torch::manual_seed(0);
  const auto start = std::chrono::steady_clock::now();
  TinyModel model;
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-3));

  // A fixed held-out batch measures progress without dropout.
  const auto [val_tokens, val_targets] = make_batch(256);
  auto evaluate = [&](torch::Tensor* accuracy) {
    model->eval();
    torch::NoGradGuard no_grad;
    const double loss = loss_of(model, val_tokens, val_targets, accuracy);
    model->train();
    return loss;
  };

  torch::Tensor accuracy;
  const double initial = evaluate(&accuracy);
  std::printf("step %4d  val loss %.4f  val accuracy %.3f\n", 0, initial, accuracy.item<double>());
  for (int step = 1; step <= kSteps; ++step) {
    const auto [tokens, targets] = make_batch(kBatch);
    const torch::Tensor logits = model->forward(tokens);
    const torch::Tensor loss =
        torch::nn::functional::cross_entropy(logits.reshape({-1, kVocab}), targets.reshape(-1));
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step % 30 == 0) {
      const double val = evaluate(&accuracy);
      std::printf("step %4d  train loss %.4f  val loss %.4f  val accuracy %.3f\n", step,
                  loss.item<double>(), val, accuracy.item<double>());
    }
  }
  const double final_loss = evaluate(&accuracy);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("val loss %.4f -> %.4f, accuracy %.3f, %.1f s\n", initial, final_loss,
              accuracy.item<double>(), seconds);
  if (!(final_loss < 0.5 * initial)) {
    std::fprintf(stderr, "FAILED: the loss did not fall below half its initial value\n");
    return 1;
  }
  return 0;
}
