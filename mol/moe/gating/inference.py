"""Prompt in, generated text and the gate's probabilities out."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from mol._errors import ConfigError, closest_match_hint
from mol.moe.gating.model import ROUTING_MODES, MoEModel

__all__ = ["InferConfig", "MoEInference"]


@dataclass
class InferConfig:
    """Keys of an inference JSON config (``mol moe infer --config``); all optional.

    Either ``saved_model_path``, or the experts (``model1_path`` + ``model2_path``, or
    ``expert_paths``) with ``gating_model_path``.
    """

    saved_model_path: str | None = None
    model1_path: str | None = None
    model2_path: str | None = None
    expert_paths: list[str] | None = None
    gating_model_path: str | None = None
    base_model_path: str | None = None
    routing_mode: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    do_sample: bool | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.routing_mode is not None and self.routing_mode not in ROUTING_MODES:
            raise ConfigError(
                f"routing_mode must be one of {', '.join(ROUTING_MODES)}, got "
                f"{self.routing_mode!r}{closest_match_hint(str(self.routing_mode), ROUTING_MODES)}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InferConfig:
        """Build from a dict; unknown keys raise ConfigError naming the closest valid key."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in valid:
                raise ConfigError(
                    f"unknown inference config key {key!r}{closest_match_hint(key, valid)}; "
                    f"valid keys: {', '.join(valid)}"
                )
        return cls(**values)


class MoEInference:
    """Load a saved MoE, or build one from its parts, and generate from text prompts.

    Args:
        saved_model_path: a directory written by ``MoEModel.save_pretrained``.
        model1_path, model2_path / expert_paths, gating_model_path, base_model_path: the parts
            (see :class:`MoEModel`), when there is no saved model.
        routing_mode: ``"weighted_sum"`` / ``"select_one"``; None keeps a saved model's mode
            (and means ``"weighted_sum"`` when building from parts).
        device: where to run.

    Raises:
        ConfigError: both or neither of a saved model and parts are given, or the model has
            no tokenizer.
    """

    def __init__(
        self,
        saved_model_path: str | os.PathLike | None = None,
        model1_path: str | os.PathLike | None = None,
        model2_path: str | os.PathLike | None = None,
        gating_model_path: str | os.PathLike | None = None,
        *,
        expert_paths: list[str | os.PathLike] | None = None,
        base_model_path: str | os.PathLike | None = None,
        routing_mode: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        parts = any(p is not None for p in (model1_path, model2_path, expert_paths))
        if saved_model_path is not None and (parts or gating_model_path is not None):
            raise ConfigError("pass saved_model_path or the expert/gate paths, not both")
        if saved_model_path is not None:
            self.model = MoEModel.from_pretrained(
                saved_model_path, routing_mode=routing_mode, device=device
            )
        elif parts:
            self.model = MoEModel(
                expert_paths=expert_paths,
                model1_path=model1_path,
                model2_path=model2_path,
                gating_model_path=gating_model_path,
                base_model_path=base_model_path,
                routing_mode=routing_mode or "weighted_sum",
                device=device,
            )
        else:
            raise ConfigError(
                "nothing to load: pass saved_model_path, or model1_path + model2_path (or "
                "expert_paths) with gating_model_path"
            )
        if self.model.tokenizer is None:
            raise ConfigError("the MoE model has no tokenizer; text prompts need one")
        self.tokenizer = self.model.tokenizer

    def _probs_dict(self, probs: torch.Tensor) -> dict[str, float]:
        return {f"model{i + 1}_prob": float(p) for i, p in enumerate(probs)}

    def get_gating_probs(self, text: str) -> dict[str, float]:
        """``{"model1_prob": p1, "model2_prob": p2, ...}`` for ``text`` (they sum to 1)."""
        return self._probs_dict(self.model.get_gating_probs(text))

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 50,
        temperature: float = 0.7,
        top_p: float = 0.9,
        do_sample: bool = True,
    ) -> dict[str, Any]:
        """Generate a continuation of ``prompt``.

        Returns:
            ``{"text": the new text only, "gating_probs": {"model1_prob", ...}}``.
        """
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch = self.tokenizer(prompt, return_tensors="pt")
        input_ids = batch["input_ids"].to(self.model.device)
        attention_mask = batch["attention_mask"].to(self.model.device)
        if input_ids.shape[1] == 0:
            raise ConfigError("the prompt is empty")
        probs = self.model.gate_probs_for(input_ids, attention_mask)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        pad = self.tokenizer.pad_token_id
        output = self.model.generate(
            input_ids,
            attention_mask=attention_mask,
            gate_probs=probs,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id,
            **sampling,
        )
        text = self.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        return {"text": text, "gating_probs": self._probs_dict(probs[0])}
