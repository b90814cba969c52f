"""The main job. Until the mini-world demo lands, it runs a short greedy generation with a tiny random model."""
import torch

from .config import ModelConfig
from .model import Qwen3


def main():
    torch.manual_seed(0)
    model = Qwen3(ModelConfig.preset("tiny")).eval()
    model.init_weights()
    ids = [1, 2, 3]
    with torch.no_grad():
        for _ in range(16):
            hidden = model(torch.tensor(ids), torch.arange(len(ids)))
            ids.append(int(model.logits(hidden[-1]).argmax()))
    print("tiny random Qwen3 (untrained weights), greedy continuation of [1, 2, 3]:", ids[3:])


if __name__ == "__main__":
    main()
