"""A toy table for fine-tuning: short reviews whose label ("bom"/"ruim") is
told by one clearly positive or negative word."""

import random

POSITIVE = ["ótimo", "excelente", "maravilhoso", "incrível", "lindo", "perfeito"]
NEGATIVE = ["péssimo", "horrível", "terrível", "ruim", "chato", "fraco"]
SUBJECTS = ["O filme", "O livro", "O jantar", "O show", "A viagem", "A aula", "O jogo", "A música"]
ENDINGS = ["sem dúvida", "de verdade", "hoje", "ontem"]


def toy_tsv(rows: int = 240, seed: int = 1) -> str:
    """Sentences whose label is told by one clearly positive or negative word."""
    rng = random.Random(seed)
    lines = ["text\tlabel"]
    for i in range(rows):
        good = i % 2
        word = rng.choice(POSITIVE if good else NEGATIVE)
        lines.append(f"{rng.choice(SUBJECTS)} foi {word}, {rng.choice(ENDINGS)}.\t"
                     f"{'bom' if good else 'ruim'}")
    return "\n".join(lines) + "\n"
