"""`archlab data prepare`: export, split or locate each real data set, and say what was done."""
from __future__ import annotations

import json
from pathlib import Path


def prepare(args) -> None:
    out = Path(args.out) if args.out else Path("data") / args.dataset
    if args.dataset == "fashion-mnist":
        from .images import describe_data, download_fashion_mnist, find_fashion_mnist, load_idx_dataset

        found = find_fashion_mnist(args.out)
        if found is None and args.download:
            found = download_fashion_mnist(out)
        if found is None:
            raise FileNotFoundError(
                "Fashion-MNIST not found (looked in --out, $ARCHLAB_DATA, $ARCHLAB_DATA/fashion-mnist, "
                "/usr/share/datasets/fashion-mnist). Install it with `apt-get install dataset-fashion-mnist`, "
                "or download it (checksums verified) with `archlab data prepare fashion-mnist --download`.")
        print(describe_data(load_idx_dataset("fashion-mnist", found)))
        if find_fashion_mnist() == found:
            print(f"recipes find it there by themselves; or pass data.data_dir={found}")
        else:  # a --out or download folder outside the default search
            print(f"recipes do not look there by themselves: export ARCHLAB_DATA={Path(found).resolve()} "
                  f"or train with --set data.data_dir={Path(found).resolve()}")
    elif args.dataset == "bible":
        from .bible import prepare_bible

        stats = prepare_bible(args.src, args.tgt, out, args.books)
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        print(f"wrote {out}/{{train,valid,test}}.tsv")
    elif args.dataset == "fortunes":
        from .text import prepare_fortunes

        stats = prepare_fortunes(out)
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        print(f"wrote {out}/{{train,valid,test}}.jsonl")
    elif args.dataset == "tang":
        from .text import corpus_text

        out.mkdir(parents=True, exist_ok=True)
        text = corpus_text("tang300")
        (out / "tang300.txt").write_text(text, encoding="utf-8")
        print(f"wrote {out}/tang300.txt: {len(text):,} characters of the 300 Tang poems (Debian fortunes-zh)")
