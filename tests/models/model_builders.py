"""Tiny Hugging Face models built from configs (random weights, CPU, eval mode) and their inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf

VOCAB = 100
PAD = 0
LABELS = 3
EOS = 2  # BART's end-of-sequence token (BOS = 1, PAD = 0)
CONV_KERNEL, CONV_STRIDE = (10, 8), (5, 4)  # the tiny wav2vec2's feature encoder: 400 samples -> 18 frames
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=VOCAB)


def _llama_config(**kwargs) -> tf.LlamaConfig:
    return tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=40, **kwargs)


def _wav2vec2_config(**kwargs) -> tf.Wav2Vec2Config:
    return tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             conv_dim=(8, 8), conv_stride=CONV_STRIDE, conv_kernel=CONV_KERNEL, num_conv_pos_embeddings=8,
                             num_conv_pos_embedding_groups=2, classifier_proj_size=24, num_labels=LABELS, **kwargs)


def _deit_config() -> tf.DeiTConfig:
    return tf.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         image_size=16, patch_size=8, num_labels=LABELS)


def _gpt2_config(**kwargs) -> tf.GPT2Config:
    return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=40, bos_token_id=1,
                         eos_token_id=1, **kwargs)


_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**TEXT, num_labels=LABELS)),
    "bert-token": lambda: tf.BertForTokenClassification(tf.BertConfig(**TEXT, num_labels=LABELS)),
    "roberta": lambda: tf.RobertaForSequenceClassification(
        tf.RobertaConfig(**TEXT, num_labels=LABELS, pad_token_id=1, max_position_embeddings=40)
    ),
    "distilbert": lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37, num_labels=LABELS)
    ),
    "deberta-v2": lambda: tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**TEXT, num_labels=LABELS)),
    "electra": lambda: tf.ElectraForSequenceClassification(
        tf.ElectraConfig(**TEXT, embedding_size=16, num_labels=LABELS)
    ),
    "gpt2": lambda: tf.GPT2ForSequenceClassification(_gpt2_config(num_labels=LABELS, pad_token_id=PAD)),
    "llama": lambda: tf.LlamaForSequenceClassification(_llama_config(num_labels=LABELS, pad_token_id=PAD)),
    "gpt2-lm": lambda: tf.GPT2LMHeadModel(_gpt2_config()),
    "llama-lm": lambda: tf.LlamaForCausalLM(_llama_config(tie_word_embeddings=True)),
    "vit": lambda: tf.ViTForImageClassification(
        tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     image_size=16, patch_size=8, num_labels=LABELS)
    ),
    "resnet": lambda: tf.ResNetForImageClassification(
        tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=LABELS)
    ),
    "convnext": lambda: tf.ConvNextForImageClassification(
        tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=LABELS)
    ),
    "wav2vec2": lambda: tf.Wav2Vec2ForSequenceClassification(_wav2vec2_config()),
    # wav2vec2-large-lv60 style: layer-normed feature encoder, pre-norm blocks and a final encoder layer_norm
    "wav2vec2-stable": lambda: tf.Wav2Vec2ForSequenceClassification(
        _wav2vec2_config(feat_extract_norm="layer", do_stable_layer_norm=True)
    ),
    "deit-teacher": lambda: tf.DeiTForImageClassificationWithTeacher(_deit_config()),
    "deit": lambda: tf.DeiTForImageClassification(_deit_config()),
    "bert-choice": lambda: tf.BertForMultipleChoice(tf.BertConfig(**TEXT)),
    "bart-lm": lambda: tf.BartForConditionalGeneration(
        tf.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, max_position_embeddings=40,
                      pad_token_id=PAD, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    ),
    "bart": lambda: tf.BartForSequenceClassification(
        tf.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, max_position_embeddings=40,
                      pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, decoder_start_token_id=EOS,
                      num_labels=LABELS)
    ),
    "t5": lambda: tf.T5ForSequenceClassification(
        tf.T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=20, num_layers=2, num_decoder_layers=2, num_heads=2,
                    pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, num_labels=LABELS)
    ),
    "ast": lambda: tf.ASTForAudioClassification(
        tf.ASTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, patch_size=8,
                     frequency_stride=8, time_stride=8, max_length=24, num_mel_bins=16, num_labels=LABELS)
    ),
    "whisper-audio": lambda: tf.WhisperForAudioClassification(
        tf.WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=20, decoder_layers=1,
                         decoder_attention_heads=2, decoder_ffn_dim=20, num_mel_bins=80, max_source_positions=1500,
                         classifier_proj_size=12, num_labels=LABELS, vocab_size=VOCAB, pad_token_id=PAD,
                         bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    ),
}


def build(name: str) -> torch.nn.Module:
    """A tiny model of family `name` in eval mode, seeded so every call builds the same weights."""
    torch.manual_seed(0)
    return _BUILDERS[name]().eval()


def text_batch(
    lengths: tuple[int, ...] = (7, 5, 3, 6), left: bool = False, pad: int = PAD
) -> dict[str, torch.Tensor]:
    """Rows of 7 token ids, padded (right by default) to `lengths`, with the attention mask."""
    ids = torch.randint(2, VOCAB, (len(lengths), 7), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        if left:
            mask[row, 7 - n:] = 1
        else:
            mask[row, :n] = 1
    ids[mask == 0] = pad
    return {"input_ids": ids, "attention_mask": mask}


def image_batch() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))}


def audio_batch() -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(3, 400, generator=torch.Generator().manual_seed(3))}
