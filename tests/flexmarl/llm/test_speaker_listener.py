import asyncio
import re
import string

import numpy as np
import pytest

from flexmarl.llm.models import build_tokenizer
from flexmarl.llm.tasks import TASKS, Completion, TextTask, make_task
from flexmarl.llm.tasks.speaker_listener import (ATTRIBUTE_WORDS, COLOURS, OBJECTS, SHAPES, SpeakerListener,
                                                 consistent_candidates, parse_letter)


def scripted(speaker_text: str, listener_text, prompts: list | None = None):
    """Agent calls answered by fixed texts; `listener_text` may be a function of the listener prompt."""

    async def call(agent: str, prompt: str) -> Completion:
        if prompts is not None:
            prompts.append((agent, prompt))
        if agent == "speaker":
            return Completion(text=speaker_text)
        return Completion(text=listener_text(prompt) if callable(listener_text) else listener_text)

    return call


def run(task, query, call):
    return asyncio.run(task.run(query, call))


def test_registry_by_name_or_module_path_and_unknown_names_list_the_registered_ones():
    assert isinstance(make_task("speaker_listener"), SpeakerListener)
    task = make_task("flexmarl.llm.tasks.speaker_listener:SpeakerListener", format_penalty=-0.5, both_fraction=0.4)
    assert isinstance(task, SpeakerListener) and task.format_penalty == -0.5 and task.both_fraction == 0.4
    with pytest.raises(ValueError, match="speaker_listener"):
        make_task("no_such_task")
    with pytest.raises(ValueError, match="not a TextTask"):
        make_task("flexmarl.llm.tasks.speaker_listener:consistent_candidates")
    assert all(issubclass(cls, TextTask) and cls.name == name for name, cls in TASKS.items())


def test_queries_are_seeded_distinct_objects_with_the_answer_pointing_at_the_target():
    task = make_task("speaker_listener")
    queries = [task.sample_query(np.random.default_rng(7)) for _ in range(2)]
    assert queries[0] == queries[1]
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = task.sample_query(rng)
        assert len(q["candidates"]) == 4 and len(set(q["candidates"])) == 4
        assert sorted(q["candidates"]) == sorted([q["target"], *q["distractors"]])
        assert q["candidates"][string.ascii_uppercase.index(q["answer"])] == q["target"]
        assert set(q["target"].split()) <= ATTRIBUTE_WORDS


def test_listener_sees_the_message_and_candidates_but_not_which_is_the_target():
    task = make_task("speaker_listener")
    query = task.sample_query(np.random.default_rng(1))
    prompts: list = []
    run(task, query, scripted("  blue\n star ", " A", prompts))
    (speaker, speaker_prompt), (listener, listener_prompt) = prompts
    assert (speaker, listener) == ("speaker", "listener")
    assert speaker_prompt.startswith("speaker:") and query["target"] in speaker_prompt
    assert all(d in speaker_prompt for d in query["distractors"])
    assert listener_prompt.startswith("listener:") and listener_prompt.endswith("message: blue star")
    assert "target" not in listener_prompt
    assert all(f"{letter} {obj}" in listener_prompt for letter, obj in zip("ABCD", query["candidates"]))


def test_both_agents_get_one_when_the_listener_picks_the_target_else_zero():
    task = make_task("speaker_listener")
    query = task.sample_query(np.random.default_rng(2))
    right = run(task, query, scripted(query["target"], f" {query['answer']}"))
    assert right.rewards == {"speaker": 1.0, "listener": 1.0} and right.success == 1.0
    assert right.format_errors == {"speaker": 0, "listener": 0}
    wrong_letter = next(letter for letter in "ABCD" if letter != query["answer"])
    wrong = run(task, query, scripted(query["target"], f"{wrong_letter}."))
    assert wrong.rewards == {"speaker": 0.0, "listener": 0.0} and wrong.success == 0.0


@pytest.mark.parametrize("answer", ["", "  ", "E", "AB", "a", "the answer is A", "answer: B"])
def test_an_unparsable_answer_gets_the_format_penalty_and_is_counted(answer):
    task = make_task("speaker_listener", format_penalty=-0.7)
    query = task.sample_query(np.random.default_rng(3))
    outcome = run(task, query, scripted(query["target"], answer))
    assert outcome.rewards == {"speaker": 0.0, "listener": -0.7}
    assert outcome.format_errors == {"speaker": 0, "listener": 1} and outcome.success == 0.0


def test_a_refused_call_counts_as_that_agents_format_error():
    task = make_task("speaker_listener", format_penalty=-1.0)
    query = task.sample_query(np.random.default_rng(4))

    async def call(agent, prompt):
        if agent == "speaker":
            return Completion(text="", finish_reason="refused", error="prompt_too_long")
        return Completion(text=f" {query['answer']}")

    outcome = run(task, query, call)
    assert outcome.format_errors == {"speaker": 1, "listener": 0}
    assert outcome.rewards == {"speaker": -1.0, "listener": 1.0}


def test_letters_parse_from_the_first_word_only():
    assert parse_letter(" C", 4) == 2 and parse_letter("B. blue", 4) == 1 and parse_letter("D)", 4) == 3
    assert parse_letter("D", 3) is None and parse_letter("", 4) is None and parse_letter("c", 4) is None


def test_consistent_candidates_match_every_named_attribute():
    candidates = ["red circle", "red star", "blue circle", "green square"]
    assert consistent_candidates("red", candidates) == [0, 1]
    assert consistent_candidates("red circle", candidates) == [0]
    assert consistent_candidates("circle hello", candidates) == [0, 2]
    assert consistent_candidates("purple", candidates) == [0, 1, 2, 3]  # nothing named: all


def chosen_object(listener_prompt: str, letter: str) -> str:
    return re.search(rf"\b{letter.strip()} (\w+ \w+)", listener_prompt).group(1)


def test_warm_start_data_names_one_attribute_mostly_and_the_listener_is_consistent():
    task = make_task("speaker_listener", both_fraction=0.15, speaker_noise=0.0, listener_noise=0.0)
    examples = task.sft_examples(np.random.default_rng(0), 4000)
    speaker, listener = examples["speaker"], examples["listener"]
    assert len(speaker) == len(listener) == 4000
    both = np.mean([len(completion.split()) == 2 for _, completion in speaker])
    assert 0.12 < both < 0.18
    successes = []
    for (s_prompt, message), (l_prompt, letter) in zip(speaker, listener):
        target = re.search(r"target (\w+ \w+);", s_prompt).group(1)
        assert message.startswith(" ") and set(message.split()) <= set(target.split())
        assert l_prompt.endswith(f"message:{message}") and letter in (" A", " B", " C", " D")
        assert set(message.split()) <= set(chosen_object(l_prompt, letter).split())
        successes.append(chosen_object(l_prompt, letter) == target)
    # The warm-start team succeeds sometimes: one attribute is ambiguous when a distractor shares it.
    assert 0.72 < np.mean(successes) < 0.82
    always_both = make_task("speaker_listener", both_fraction=1.0, speaker_noise=0.0).sft_examples(np.random.default_rng(0), 200)
    assert all(len(completion.split()) == 2 for _, completion in always_both["speaker"])


def test_warm_start_noise_gives_wrong_words_and_random_letters_that_rl_can_remove():
    """Default warm start: 30% of messages a random attribute word (a quarter of those happen to be the
    target's), 30% of answers a random letter; the team succeeds far less often than the clean one."""
    examples = make_task("speaker_listener").sft_examples(np.random.default_rng(0), 4000)
    wrong_words, inconsistent, successes = [], [], []
    for (s_prompt, message), (l_prompt, letter) in zip(examples["speaker"], examples["listener"]):
        target = re.search(r"target (\w+ \w+);", s_prompt).group(1)
        wrong_words.append(not set(message.split()) <= set(target.split()))
        candidates = re.findall(r"\b[A-D] (\w+ \w+)", l_prompt)
        consistent = [obj for obj in candidates if set(message.split()) <= set(obj.split())] or candidates
        inconsistent.append(chosen_object(l_prompt, letter) not in consistent)
        successes.append(chosen_object(l_prompt, letter) == target)
    assert 0.19 < np.mean(wrong_words) < 0.26  # 0.3 * 6/8
    assert 0.05 < np.mean(inconsistent) < 0.2  # a random letter is often consistent by chance
    assert 0.35 < np.mean(successes) < 0.55


def test_corpus_covers_the_words_and_prompts_stay_short_with_the_task_tokenizer():
    task = make_task("speaker_listener")
    corpus = task.corpus()
    examples = task.sft_examples(np.random.default_rng(1), 200)
    texts = [text for pairs in examples.values() for pair in pairs for text in pair]
    assert set(" ".join(texts).split()) <= set(" ".join(corpus).split())
    assert set(COLOURS) | set(SHAPES) | set("ABCD") <= set(re.findall(r"\w+", " ".join(corpus)))
    tokenizer = build_tokenizer(corpus, 512)
    assert len(tokenizer) <= 512
    for prompt, completion in examples["speaker"] + examples["listener"]:
        assert len(tokenizer.encode(prompt)) < 40
        assert tokenizer.decode(tokenizer.encode(prompt) + tokenizer.encode(completion)) == prompt + completion
    # The longest message a speaker can send in 8 tokens still leaves the listener prompt short.
    long_message = " ".join(["yellow triangle"] * 4)
    prompt = "listener: A red circle, B red star, C blue circle, D green square. message: " + long_message
    assert len(tokenizer.encode(prompt)) < 60
    assert len(OBJECTS) == 16


def test_bad_kwargs_are_refused():
    with pytest.raises(ValueError, match="both_fraction"):
        make_task("speaker_listener", both_fraction=1.5)
    with pytest.raises(ValueError, match="listener_noise"):
        make_task("speaker_listener", listener_noise=-0.1)
    with pytest.raises(ValueError, match="num_distractors"):
        make_task("speaker_listener", num_distractors=16)
    task = make_task("speaker_listener", num_distractors=1)
    query = task.sample_query(np.random.default_rng(0))
    assert len(query["candidates"]) == 2
    assert run(task, query, scripted("x", " C")).format_errors["listener"] == 1
