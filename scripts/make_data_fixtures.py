#!/usr/bin/env python3
"""Writes the small dataset fixtures under tests/fixtures/data/ (run once; the outputs are committed).

Needs pyarrow (`pip install pyarrow`). The problems are made up here (no benchmark text), in the formats of
GSM8K (question / answer with `#### N`), chat JSONL, and verl's RL parquet schema (DAPO-Math-17k style).
Parquet files are snappy-compressed, as pandas/pyarrow write them by default.
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "data")
os.makedirs(OUT, exist_ok=True)


def write_jsonl(name, rows):
    with open(os.path.join(OUT, name), "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


# GSM8K layout: question, answer = steps with <<calc>> annotations and a final `#### N` (commas in N allowed).
write_jsonl("gsm8k_mini.jsonl", [
    {"question": "Lia has 3 boxes with 4 pens each. How many pens does she have?",
     "answer": "3 boxes of 4 pens is 3*4=<<3*4=12>>12 pens.\n#### 12"},
    {"question": "A farm sells 1,200 eggs a day for 5 days. How many eggs is that?",
     "answer": "1200*5=<<1200*5=6000>>6000\n#### 6,000"},
    {"question": "Omar had 10 dollars and spent 7. How much is left?",
     "answer": "10-7=<<10-7=3>>3\n#### 3"},
])

# Chat / plain JSONL: prompt string or messages list, answer string or number, optional id; a blank line.
write_jsonl("chat_mini.jsonl", [
    {"id": "a1", "prompt": "What is 2 + 3?", "answer": "5"},
    {"id": "a2", "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "What is half of 9?"}], "answer": "\\frac{9}{2}"},
    "",
    {"id": 7, "prompt": "What is 6 * 7?", "answer": 42},
])

# Malformed JSONL: line 2 lacks the answer; line 3 (in another file) has a bad message.
write_jsonl("bad_missing_answer.jsonl", [
    {"prompt": "What is 1 + 1?", "answer": "2"},
    {"prompt": "What is 2 + 2?"},
])
write_jsonl("bad_message.jsonl", [
    {"prompt": "What is 1 + 1?", "answer": "2"},
    {"prompt": "What is 1 + 2?", "answer": "3"},
    {"messages": [{"role": "user"}], "answer": "4"},
])

SUFFIX = ('Solve the following math problem step by step. The last line of your response should be of the form '
          'Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n'
          'Remember to put your answer on its own line after "Answer:".')


def verl_table(rows):
    msg = pa.struct([("content", pa.string()), ("role", pa.string())])
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(msg)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string())])),
    ])
    cols = {k: [r[k] for r in rows] for k in schema.names}
    return pa.table(cols, schema=schema)


problems = [("What is 17 + 25?", "42"), ("Compute 12 * 12.", "144"), ("What is 1000 - 1?", "999"),
            ("What is 3 squared?", "9"), ("What is 100 / 4?", "25")]
rows = [{
    "data_source": "math_dapo",
    "prompt": [{"content": SUFFIX.format(q), "role": "user"}],
    "ability": "MATH",
    "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
    "extra_info": {"index": 100 + i, "split": "train"},
} for i, (q, a) in enumerate(problems)]
pq.write_table(verl_table(rows), os.path.join(OUT, "verl_mini.parquet"), compression="snappy")

bad = [dict(r) for r in rows[:3]]
bad[2] = dict(bad[2], reward_model={"ground_truth": None, "style": "rule"})
pq.write_table(verl_table(bad), os.path.join(OUT, "bad_verl.parquet"), compression="snappy")
print("wrote", sorted(os.listdir(OUT)))
