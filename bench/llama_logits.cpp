// llama.cpp's logits for every position of a prompt, for bench/vs-llama-cpp.sh's check that
// llama.cpp and troupe run the same model. Uses only llama.h (no `common` library).
//
// Build: g++ -O2 -std=c++17 -I$LLAMA_CPP_DIR/include -I$LLAMA_CPP_DIR/ggml/include llama_logits.cpp \
//            -L$LLAMA_CPP_DIR/build/bin -lllama -Wl,-rpath,$LLAMA_CPP_DIR/build/bin -o llama-logits
// Usage: llama-logits MODEL.gguf THREADS TEXT OUT.bin
// Tokenizes TEXT as llama.cpp does (BOS added when the GGUF says so), prints `ids: a,b,c` on
// stdout, runs one batch over all positions and writes n_tokens x n_vocab f32 logits to OUT.bin.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama.h"

int main(int argc, char ** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s MODEL.gguf THREADS TEXT OUT.bin\n", argv[0]);
        return 2;
    }
    const int threads = std::atoi(argv[2]);
    const std::string text = argv[3];
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers       = 0;
    llama_model * model   = llama_model_load_from_file(argv[1], mp);
    if (model == nullptr) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> ids(text.size() + 8);
    const int n = llama_tokenize(vocab, text.c_str(), (int) text.size(), ids.data(), (int) ids.size(),
                                 llama_vocab_get_add_bos(vocab), false);
    if (n <= 0) {
        std::fprintf(stderr, "tokenization failed (%d)\n", n);
        return 1;
    }
    ids.resize(n);
    std::printf("ids: ");
    for (int i = 0; i < n; i++) {
        std::printf(i ? ",%d" : "%d", ids[i]);
    }
    std::printf("\n");

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx                = n < 256 ? 256 : n;
    cp.n_batch              = cp.n_ctx;
    cp.n_ubatch             = cp.n_ctx;
    cp.n_threads            = threads;
    cp.n_threads_batch      = threads;
    // An f32 cache, as troupe's: the check is about what the model computes, not cache precision.
    cp.type_k               = GGML_TYPE_F32;
    cp.type_v               = GGML_TYPE_F32;
    llama_context * ctx     = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        std::fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i]     = ids[i];
        batch.pos[i]       = i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        std::fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    FILE *    out     = std::fopen(argv[4], "wb");
    if (out == nullptr) {
        std::fprintf(stderr, "cannot write %s\n", argv[4]);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        std::fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);
    }
    std::fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
