"""`tokenize --from DIR TEXT`: how a trained run's tokenizer cuts a text, token by token, and the tokenizer itself
as a text file (--save)."""
from microgpt.errors import UserError
from microgpt.loading import checkpoint_path, read
from microgpt.tokenizer import from_metadata


def shown(raw):
    """What a token stands for: its text, or its bytes when they are part of a character."""
    try:
        return repr(raw.decode())
    except UnicodeDecodeError:
        return repr(raw)


def tokenize_command(args):
    path = checkpoint_path(args.source)
    tok = from_metadata(read(path)[1]["tokenizer"])
    ids = tok.encode(args.text)
    n_bytes = len(args.text.encode())
    print(f"{path}: {tok.kind} tokenizer, vocab size {tok.vocab_size}; {len(ids)} tokens for {n_bytes} bytes"
          + (f" ({n_bytes / len(ids):.2f} bytes per token)" if ids else ""))
    for i in ids:
        print(f"{i:6d}  {shown(tok.token_bytes(i))}")
    if args.save:
        try:
            tok.save(args.save)
        except OSError as e:
            raise UserError(f"cannot write {args.save}: {e.strerror}; choose another --save path") from None
        print(f"saved the tokenizer to {args.save}")
