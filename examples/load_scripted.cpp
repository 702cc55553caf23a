// Runs a TorchScript model that calls mhsa ops, e.g. one saved from Python by
// tests/python/make_scripted_model.py:
//   load_scripted MODEL.pt [INPUT.pt]
// INPUT.pt is a scripted module with a tensor attribute `input`; without it the input is a
// random (1, L, E) tensor whose E is read from the model's in_proj_weight parameter.
#include <torch/script.h>

// Including an mhsa header makes this program link libmhsa.so, whose static initializers
// register the mhsa:: ops; without it loading the model fails with "Unknown builtin op".
#include <mhsa/ops.h>

#include <iostream>
#include <string>

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Embedding size and dtype from the model's attention parameters.
bool input_spec_from_parameters(const torch::jit::Module& model, int64_t* embed_dim,
                                at::ScalarType* dtype) {
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    if (ends_with(p.name, "in_proj_weight") && p.value.dim() == 2) {
      *embed_dim = p.value.size(1);
      *dtype = p.value.scalar_type();
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt [INPUT.pt]\n";
    return 2;
  }
  try {
    torch::jit::Module model = torch::jit::load(argv[1]);
    model.eval();

    at::Tensor input;
    if (argc == 3) {
      torch::jit::Module holder = torch::jit::load(argv[2]);
      if (!holder.hasattr("input")) {
        std::cerr << argv[2] << " has no attribute `input`\n";
        return 1;
      }
      input = holder.attr("input").toTensor();
    } else {
      int64_t embed_dim = 0;
      at::ScalarType dtype = at::kFloat;
      if (!input_spec_from_parameters(model, &embed_dim, &dtype)) {
        std::cerr << "no parameter named *in_proj_weight in " << argv[1]
                  << "; pass an input file as the second argument\n";
        return 1;
      }
      const int64_t seq_len = 8;
      torch::manual_seed(0);
      input = torch::randn({1, seq_len, embed_dim}, torch::TensorOptions().dtype(dtype));
    }
    std::cout << "input " << input.sizes() << " " << input.scalar_type() << "\n";

    c10::InferenceMode inference;  // no autograd bookkeeping
    const c10::IValue result = model.forward({input});
    // The model may return (output, attention weights) or only the output.
    const at::Tensor output =
        result.isTuple() ? result.toTupleRef().elements().at(0).toTensor() : result.toTensor();
    std::cout << "output " << output.sizes() << "\n";
    if (!torch::isfinite(output).all().item<bool>()) {
      std::cerr << "output has NaN or inf\n";
      return 1;
    }
    if (output.dim() == 3) {
      const at::Tensor prediction = output.argmax(-1);  // (dim0, dim1)
      for (int64_t b = 0; b < prediction.size(0); ++b) {
        std::cout << "argmax[" << b << "]:";
        for (int64_t l = 0; l < prediction.size(1); ++l) {
          std::cout << " " << prediction[b][l].item<int64_t>();
        }
        std::cout << "\n";
      }
    }
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
