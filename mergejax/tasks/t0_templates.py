"""Prompt templates for the datasets of :mod:`mergejax.tasks.t0`, as data.

Every template follows one of promptsource's *original-task* templates (``metadata.original_task: true``:
the kind of prompt T0 trains and evaluates with) for that dataset: the same fields in the same roles,
the same question asked of them, the same answer choices and the same target, so that the task each
template poses is the task T0's template poses. The wording of the prompts is mergejax's own, written
from those templates' published semantics; each template names the one it follows by promptsource's
template ``name`` and ``id`` in ``promptsource/templates/<SOURCES[dataset]>/templates.yaml`` of
bigscience-workshop/promptsource (:func:`source`). Scores are therefore comparable across merges and
models evaluated with this suite, not digit for digit with T0's published numbers.

Templates are written in the template language of :mod:`mergejax.tasks.t0_prompts` (a Jinja subset) over
promptsource's (Hugging Face) field names; :mod:`mergejax.tasks.t0` maps the TFDS copies of the datasets
onto them. ``references`` (every acceptable answer of a generation template) is mergejax's: a template has
one target.

Three or four templates per dataset, chosen to cover the different framings promptsource has for it
(question first or last, answer as text or as a letter, yes/no or true/false verbalizers; for COPA, both
the cause-only and the effect-only templates). wiki_bio has one: promptsource has a single original-task
template for it. Not followed (the TFDS copies cannot render them, or they score differently):

* trec's fine-grained templates: 50 fine labels in Hugging Face's order (TFDS has 47, in another order).
* hellaswag's ``complete_first_then``: needs ``ctx_a`` / ``ctx_b``, which the TFDS copy joins into ``context``.
* super_glue/record's "continuation choices" templates (metric Accuracy): the dataset is scored by generation
  (SQuAD F1) with the templates whose target is the answer entity.
"""

from __future__ import annotations

from mergejax.tasks.t0_prompts import Template

T = Template

PROMPTSOURCE_COMMIT = "7dab96a3eeb3717cea633705135ebc488885d709"  # the promptsource revision the ids refer to

# dataset -> promptsource's template directory for it
SOURCES: dict[str, str] = {
    "imdb": "imdb",
    "yelp_polarity": "yelp_polarity",
    "ag_news": "ag_news",
    "trec": "trec",
    "qqp": "glue/qqp",
    "paws": "paws/labeled_final",
    "common_gen": "common_gen",
    "wiki_bio": "wiki_bio",
    "cnn_dailymail": "cnn_dailymail/3.0.0",
    "gigaword": "gigaword",
    "cosmos_qa": "cosmos_qa",
    "qasc": "qasc",
    "squad_v2": "squad_v2",
    "record": "super_glue/record",
    "web_questions": "web_questions",
    "arc_easy": "ai2_arc/ARC-Easy",
    "copa": "super_glue/copa",
    "hellaswag": "hellaswag",
    "rte": "super_glue/rte",
    "cb": "super_glue/cb",
    "anli": "anli",
    "wsc": "super_glue/wsc.fixed",
    "winogrande": "winogrande/winogrande_xl",
    "wic": "super_glue/wic",
    "story_cloze": "story_cloze/2016",
}


def source(dataset: str, template: Template) -> str:
  """The promptsource template a template follows, e.g. ``promptsource/templates/imdb/templates.yaml#af51...``."""
  return f"promptsource/templates/{SOURCES[dataset]}/templates.yaml#{template.id}"


# Pieces several templates share.
_LABEL = "{{ answer_choices[label] }}"
_LABEL_IF = "{% if label != -1 %}{{ answer_choices[label] }}{% endif %}"  # SuperGLUE test rows have label -1
_OPTIONS = "- {{ answer_choices | join(\"\\n- \") }}"
_QASC_ANSWER = ("{% for choice in choices.label %}{% if choice == answerKey %}{{ answer_choices[loop.index0] }}"
                "{% endif %}{% endfor %}")
_ARC_ANSWER = "{{ answer_choices[choices[\"label\"].index(answerKey)] }}"
_SQUAD_TARGET = "{% if answers.text == [] %}unanswerable{% else %}{{ answers.text[0] }}{% endif %}"
_SQUAD_REFS = "answers.text if answers.text | length > 0 else [\"unanswerable\"]"
_RECORD_TARGET = "{% if (answers | length) > 0 %}{{ answers | choice }}{% endif %}"
_COMMON_GEN_REFS = "references if references | length > 0 else [target]"
_WINO_TARGET = "{% if answer == '1' %}{{ option1 }}{% else %}{{ option2 }}{% endif %}"
_STORY_TARGET = "{{ answer_choices[answer_right_ending - 1] }}"
_QASC_FACTS = ("First fact: {{ fact1[0] | capitalize }}{{ fact1[1:] | trim | trim('.') }}.\n"
               "Second fact: {{ fact2[0] | capitalize }}{{ fact2[1:] | trim | trim('.') }}.\n")

TEMPLATES: dict[str, tuple[Template, ...]] = {
    # -- sentiment ---------------------------------------------------------------------------------------
    "imdb": (
        T("Movie Expressed Sentiment", "af51297c-38a3-4d6c-a8b5-04b1243d7443",
          "{{ text }} The feeling this review conveys about the film is ||| " + _LABEL,
          "negative ||| positive"),
        T("Reviewer Enjoyment Yes No", "bd82ba0f-01d4-4fa1-bf8d-07e392c00cd9",
          "{{ text }} Was the person who wrote this happy with the movie? ||| " + _LABEL, "No ||| Yes"),
        T("Sentiment with choices", "5f372fb1-795a-47b6-8ddf-c4fd1579e76a",
          "{{ text }}\nWould you call this review positive or negative? ||| " + _LABEL, "negative ||| positive"),
    ),
    "yelp_polarity": (
        T("experience_good_bad", "01dc166f-0774-4be0-b606-2beb2252d9b5",
          "{{ text }}\nAll in all, the visit was ||| " + _LABEL, "bad ||| good"),
        T("rating_high_low", "13f829c1-ca58-4efd-b1f0-14446b176871",
          "{{ text }}\nGiven all this, the score I would give the place is ||| " + _LABEL, "low ||| high"),
        T("format_come_again", "a5ec86fb-046d-482b-a552-8499b8b59b8f",
          "Customer review:\n{{ text }}\n\nWill this customer go back there? ||| " + _LABEL, "No ||| Yes"),
    ),
    # -- topic classification ------------------------------------------------------------------------------
    "ag_news": (
        T("classify", "cb355f33-7e8c-4455-a72b-48d315bd4f60",
          "{{ text }}\nWhich topic fits this news story best? ||| " + _LABEL,
          "World politics ||| Sports ||| Business ||| Science and technology"),
        T("which_section", "98534347-fff7-4c39-a795-4e69a44791f7",
          "{{ text }}\n\nIn which part of a newspaper would you expect to read this story? ||| " + _LABEL,
          "World News ||| Sports ||| Business ||| Science and Technology"),
        T("recommend", "918267e0-af68-4117-892d-2dbe66a58ce9",
          "Who would find the following article most useful: a politician, an athlete, a business executive "
          "or a scientist?\n\n{{ text }} ||| " + _LABEL,
          "Politician ||| Athlete ||| Business executive ||| Scientist"),
    ),
    "trec": (
        T("what_category_best_describe", "21d04668-c5b3-4418-bbb6-663f1ffdb97c",
          "Possible categories: {{ ', '.join(answer_choices) }}\n\nWhich category does this question belong to? "
          "{{ text }}\nCategory: ||| {{ answer_choices[coarse_label] }}",
          "Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| Quantity"),
        T("pick_the_best_descriptor", "6c391f4f-027b-4425-88de-1dbb6aa706ee",
          "Question: {{ text }}\n\nLabels: {{ ', '.join(answer_choices) }}\n\nWhich label says what the question "
          "asks for? ||| {{ answer_choices[coarse_label] }}",
          "Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| Quantity"),
        T("trec2", "aad2def1-b694-40ee-9c26-3d1cf5c577da",
          "Does the question below ask about {{ ', '.join(answer_choices) }}?\n\n{{ text }} ||| "
          "{{ answer_choices[coarse_label] }}",
          "Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| Quantity"),
    ),
    # -- paraphrase identification -------------------------------------------------------------------------
    "qqp": (
        T("quora", "8e711799-a57c-4941-833b-466bedfb80ad",
          "Two questions were posted on a question-answering forum: \"{{ question1 }}\" and \"{{ question2 }}\". "
          "Questions that ask the same thing can be merged into one. Should these two be merged? ||| " + _LABEL,
          "no ||| yes"),
        T("duplicate or not", "94972071-a726-42a3-a726-13f414b65e67",
          "{{ question1 }}\n{{ question2 }}\nChoose one: the two questions are \"duplicates\" or "
          "\"not duplicates\". ||| " + _LABEL, "not duplicates ||| duplicates"),
        T("meaning", "c0724198-97e7-44a1-89d8-c51e97ce0b04",
          "Question 1: {{ question1 }}\nQuestion 2: {{ question2 }}\n\nDo both questions mean the same thing? "
          "Yes or no? ||| " + _LABEL, "No ||| Yes"),
    ),
    "paws": (
        T("Meaning", "472fe5eb-b499-4952-a930-f72f4ca9ed43",
          "Sentence 1: {{ sentence1 }}\nSentence 2: {{ sentence2 }}\nQuestion: Do the two sentences say the same "
          "thing? Yes or No? ||| " + _LABEL, "No ||| Yes"),
        T("context-question", "7c205a61-64d4-4673-bb8e-bfa77562eede",
          "{{ sentence1 }}\nDoes this sentence paraphrase the next one?\n{{ sentence2 }}\nYes or No. ||| " + _LABEL,
          "No ||| Yes"),
        T("PAWS-ANLI GPT3", "d9911dad-75fe-4506-9843-3a46ba5e49be",
          "{{ sentence1 }}\nClaim: {{ sentence2 }} True or False? ||| " + _LABEL, "False ||| True"),
    ),
    # -- structure to text ---------------------------------------------------------------------------------
    "common_gen": (
        T("Put together", "684f1859-0b8d-4efe-82e1-7218838813cd",
          "Combine these concepts into one sentence: {{ concepts | join(\", \") }}. ||| {{ target }}",
          references=_COMMON_GEN_REFS),
        T("Given concepts type 1", "fbeebb4f-cba1-4bc4-80ec-758a3c134033",
          "Concepts: {{ concepts | join(\", \") }}\nWrite one sentence that uses every concept above. ||| "
          "{{ target }}", references=_COMMON_GEN_REFS),
        T("choice in concept centric sentence generation", "a4991cc7-cc91-4f37-af80-1983a02eb950",
          "Write a sentence around the word {{ concepts | choice }}.\n\nIt should also use: "
          "{{ concepts | join(\", \") }} ||| {{ target }}", references=_COMMON_GEN_REFS),
        T("random task template prompt", "b2033df4-7922-45b8-a113-e7784135cea9",
          "{% set asks = ['Turn these concepts into a sentence:', 'Write a sentence from the concepts below:', "
          "'Make one sentence out of these concepts:'] %}{{ asks | choice }}\n{{ concepts | join(\", \") }} ||| "
          "{{ target }}", references=_COMMON_GEN_REFS),
    ),
    "wiki_bio": (
        T("who", "0e240546-0d3c-4049-9cc7-32039a6e50ff",
          "Facts:\n{% for n in range(input_text[\"table\"][\"column_header\"] | length) %}"
          "{% if input_text[\"table\"][\"column_header\"][n] != \"article_title\" %}"
          "- {{ input_text[\"table\"][\"column_header\"][n].replace(\"_\", \" \") }}: "
          "{{ input_text[\"table\"][\"content\"][n] }}\n{% endif %}{% endfor %}"
          "From these facts, write a short biography of {{ input_text[\"context\"] }}. ||| {{ target_text }}"),
    ),
    # -- summarization -------------------------------------------------------------------------------------
    "cnn_dailymail": (
        T("news_summary", "1c446bde-b3e6-4629-860f-9125681c72a1",
          "Summarize this article:\n\n{{ article }} ||| {{ highlights }}"),
        T("2_or_3_sentences", "6e46894f-b5ff-4259-a691-63f1da8405da",
          "Article: {{ article }}\n\nWhat are the two or three points of this news story worth remembering? ||| "
          "{{ highlights }}"),
        T("write_an_outline", "0556fd07-f7de-4daf-a0ae-4cda4fc239c8",
          "Outline the article below in a few short points.\n\nArticle: {{ article }} ||| {{ highlights }}"),
    ),
    "gigaword": (
        T("make_a_title", "696e561e-1311-4a3e-9ca1-51d1fd77392b",
          "Give this article a title: {{ document }} ||| {{ summary }}"),
        T("first_sentence_title", "7ad1a48a-195d-4c0c-aea5-df0689589f27",
          "Opening sentence of a news story: {{ document }}\n\nHeadline: ||| {{ summary }}"),
        T("TLDR", "90c34acf-2f42-4e66-98dc-7453f7e60e60",
          "{{ document }}\n\nThe short version: ||| {{ summary }}"),
    ),
    # -- multiple-choice QA --------------------------------------------------------------------------------
    "cosmos_qa": (
        T("description_context_question_answer_text", "08e20b79-d1c0-4717-b538-f1a313c2b7d2",
          "Read the passage and pick the option that best answers the question.\nPassage: {{ context }}\n"
          "Question: {{ question }}\nOptions:\n" + _OPTIONS + " ||| " + _LABEL,
          "{{ answer0 }} ||| {{ answer1 }} ||| {{ answer2 }} ||| {{ answer3 }}"),
        T("description_context_question_answer_id", "693c47c6-f17c-417a-af70-bc20e71b4ed4",
          "Passage: {{ context }}\nQuestion: {{ question }}\nWhich letter gives the best answer?\n"
          "A. {{ answer0 }}\nB. {{ answer1 }}\nC. {{ answer2 }}\nD. {{ answer3 }} ||| " + _LABEL,
          "A ||| B ||| C ||| D"),
        T("context_description_question_text", "c07c459e-f1f7-409e-9da7-fe5c993a4933",
          "{{ context }}\nAnswer the question using the text above.\n{{ question }} ||| " + _LABEL,
          "{{ answer0 }} ||| {{ answer1 }} ||| {{ answer2 }} ||| {{ answer3 }}"),
    ),
    "qasc": (
        T("qa_with_separated_facts_3", "5d63c186-e047-49dd-b5fd-c4a574f6f0e2",
          _QASC_FACTS + "\nUsing both facts, {{ question[0] | lower }}{{ question[1:] | trim('?') }}? ||| "
          + _QASC_ANSWER, "{{ choices.text | join(\"|||\") }}"),
        T("qa_with_separated_facts_2", "c7cd51f1-ea49-4d6a-a422-46624333b7b1",
          _QASC_FACTS + "\nAnswer the question \"{{ question }}\" by picking one of:\n" + _OPTIONS + " ||| "
          + _QASC_ANSWER, "{{ choices.text | join(\"|||\") }}"),
        T("qa_with_separated_facts_4", "604dd379-21f1-4d30-af2f-22f9a8a97ceb",
          "Question: \"{{ question }}\"\nChoices:\n" + _OPTIONS + "\n\nHint: {{ fact1[0] | lower }}"
          "{{ fact1[1:] | trim | trim('.') }}, and {{ fact2[0] | lower }}{{ fact2[1:] | trim | trim('.') }}. "
          "Which choice is best? ||| " + _QASC_ANSWER, "{{ choices.text | join(\"|||\") }}"),
    ),
    # -- extractive QA ---------------------------------------------------------------------------------------
    "squad_v2": (
        T("Questions with Context +unanswerable", "b14c9843-fd56-42ff-817d-39e41963c847",
          "{% set asks = ['Answer the question from the context.', 'What does the context say?'] %}"
          "{{ asks | choice }}\nContext: {{ context }}\nQuestion: {{ question }}\nIf the context does not "
          "contain the answer, reply \"unanswerable\".\nAnswer: ||| " + _SQUAD_TARGET, references=_SQUAD_REFS),
        T("Questions with Context - Without Prompt Keywords +unanswerable", "e1630107-8f5d-44ce-8ccd-6fa80da80328",
          "{% set asks = ['Tell me ', 'From the passage, ', 'I would like to know ', 'Find out: ', ''] %}"
          "{{ context }} {{ asks | choice }}{{ question }} Reply \"unanswerable\" if the passage does not say. "
          "||| " + _SQUAD_TARGET, references=_SQUAD_REFS),
        T("Questions with Context", "17b83a3f-f748-42e6-9cdf-b2951dd8299d",
          "Context: {{ context }}\nQuestion: {{ question }}\nAnswer (\"unanswerable\" when the context has no "
          "answer): ||| " + _SQUAD_TARGET, references=_SQUAD_REFS,
          note="promptsource's target for an unanswerable question is \"Answer not in context\"; this template "
               "states its verbalizer in the prompt"),
    ),
    "record": (
        T("corrupted", "11e27d59-b1f5-43a1-9ccc-17f1c3249173",
          "Part of this document was replaced by \"@placeholder\". Say what \"@placeholder\" stands for.\n\n"
          "Document: {{ passage }}\n{{ query }} ||| " + _RECORD_TARGET,
          "{{ entities | join(\"|||\") }}", references="answers"),
        T("choose_between", "441c70e3-095a-44a1-8163-bc3b666b7ea1",
          "{{ passage }}\n{{ query }}\n\nWhich entity does \"@placeholder\" stand for? Options:\n" + _OPTIONS
          + " ||| " + _RECORD_TARGET, "{{ entities | join(\"|||\") }}", references="answers"),
        T("In the question above, the placeholder stands for", "91555c1c-c1e4-469b-a2a4-fc952ce1a145",
          "{{ passage }}\n{{ query }}\nIn the sentence above, \"@placeholder\" is ||| " + _RECORD_TARGET,
          "{{ entities | join(\"|||\") }}", references="answers"),
    ),
    # -- closed-book QA --------------------------------------------------------------------------------------
    "web_questions": (
        T("get_the_answer", "427785bc-a8f3-4c86-bd43-e54447a58615",
          "Answer this with the right fact: {{ question }} ||| {{ answers | choice }}", references="answers"),
        T("whats_the_answer", "bfed45a7-b36c-440b-8c94-f117cc6c9f34",
          "What is the answer to this question? {{ question }} ||| {{ answers | choice }}", references="answers"),
        T("short_general_knowledge_q", "df08956c-035b-4216-af1c-61250617faa4",
          "A quick trivia question: {{ question }} ||| {{ answers | choice }}", references="answers"),
        T("question-answer", "e5c72a6b-8ab4-4219-9f41-debf7224884c",
          "{{ question | capitalize }} ||| {{ answers | choice }}", references="answers"),
    ),
    "arc_easy": (
        T("qa_options", "252aa566-9482-4e81-aad9-664a9bebd8e8",
          "{{ question }}\n\nChoices:\n" + _OPTIONS + " ||| " + _ARC_ANSWER, "{{ choices.text | join(\"|||\") }}"),
        T("pick_the_most_correct_option", "033498ca-3d9a-47e3-b631-d881ab53b5ad",
          "Choose the best option for the question below.\n\n{{ question }}\n\nOptions:\n"
          "{% for letter, t in zip(answer_choices, choices.text) %}- {{ letter }}: {{ t }}\n{% endfor %}"
          "Letter: ||| {{ answerKey }}", "{{ choices.label | join(\"|||\") }}"),
        T("multiple_choice", "8c689423-880d-402b-8c7d-a1a98c7589e8",
          "A multiple-choice question from a science test: {{ question }}\n\nExactly one of these answers is "
          "right:\n" + _OPTIONS + "\n\nWhich one? ||| " + _ARC_ANSWER, "{{ choices.text | join(\"|||\") }}"),
    ),
    # -- held out: sentence completion -----------------------------------------------------------------------
    "copa": (
        T("choose", "f32348cd-d3cb-4619-87b9-e24f99c78567",
          "{{ premise }} {% if question == \"cause\" %}This happened because...{% else %}What happened as a "
          "result...{% endif %}\nPick one:\n- {{ choice1 }}\n- {{ choice2 }} ||| " + _LABEL_IF,
          "{{ choice1 }} ||| {{ choice2 }}"),
        T("cause_effect", "a61d8c21-da25-47bf-b5fe-14a8edd650af",
          "{{ premise }}\n\nWhich is the more plausible {% if question == \"cause\" %}cause{% else %}effect"
          "{% endif %}?\n- {{ choice1 }}\n- {{ choice2 }} ||| " + _LABEL_IF, "{{ choice1 }} ||| {{ choice2 }}"),
        T("…As a result, C1 or C2?", "84da62c2-9440-4cfc-bdd4-d70c65e33a82",
          "{% if question == \"effect\" %}{{ premise }} What followed: \"{{ answer_choices[0] }}\" or "
          "\"{{ answer_choices[1] }}\"? ||| " + _LABEL_IF + "{% endif %}", "{{ choice1 }} ||| {{ choice2 }}"),
        T("…which may be caused by", "8cf2ba73-aee5-4651-b5d4-b1b88afe4abb",
          "{% if question == \"cause\" %}{{ premise }} What was the cause: \"{{ answer_choices[0] }}\" or "
          "\"{{ answer_choices[1] }}\"? ||| " + _LABEL_IF + "{% endif %}", "{{ choice1 }} ||| {{ choice2 }}"),
    ),
    "hellaswag": (
        T("Predict ending with hint", "6e9f8d7d-9016-45bc-b997-c42aeb2dc944",
          "How does this description continue?\n{{ ctx }}\n\n(a) {{ answer_choices[0] }}\n(b) "
          "{{ answer_choices[1] }}\n(c) {{ answer_choices[2] }}\n(d) {{ answer_choices[3] }}\n\nTopic: "
          "{{ activity_label }} ||| {{ answer_choices[label | int] }}", "{{ endings | join(\"|||\") }}"),
        T("if_begins_how_continues", "def77598-682f-48de-b187-55db4d390f07",
          "A situation starts like this: {{ ctx }}... What comes next?\n\nEnding 1: {{ endings[0] }}\n"
          "Ending 2: {{ endings[1] }}\nEnding 3: {{ endings[2] }}\nEnding 4: {{ endings[3] }} ||| "
          "{{ answer_choices[label | int] }}", "Ending 1 ||| Ending 2 ||| Ending 3 ||| Ending 4"),
        T("Randomized prompts template", "52fbd075-46cb-49fb-a41b-00a0f4a60285",
          "{% set asks = ['Which ending fits this sentence? ', 'Finish the sentence: ', 'What is the most "
          "sensible ending of: '] %}{{ asks | choice }}{{ ctx }}\n\n(a) {{ answer_choices[0] }}\n(b) "
          "{{ answer_choices[1] }}\n(c) {{ answer_choices[2] }}\n(d) {{ answer_choices[3] }} ||| "
          "{{ answer_choices[label | int] }}", "{{ endings | join(\"|||\") }}"),
    ),
    "story_cloze": (
        T("Choose Story Ending", "1a9d53bc-eb77-4e7c-af6e-3d15b79d6cf1",
          "Here is a story:\n\n{{ context }}\n\nPick the ending that fits it best:\n" + _OPTIONS + " ||| "
          + _STORY_TARGET, "{{ sentence_quiz1 }} ||| {{ sentence_quiz2 }}",
          note="the four sentences joined by spaces (TFDS `context`)"),
        T("Answer Given options", "1a4946f9-a0e2-4fbb-aee8-b26ead2cf6b8",
          "{{ context }} How might the story go on? Options:\n" + _OPTIONS + " ||| " + _STORY_TARGET,
          "{{ sentence_quiz1 }} ||| {{ sentence_quiz2 }}"),
        T("Novel Correct Ending", "c6f3d802-4f97-449f-a911-03470d418f7d",
          "I read this story: {{ context }} Which ending is the most likely? Choose from:\n" + _OPTIONS + " ||| "
          + _STORY_TARGET, "{{ sentence_quiz1 }} ||| {{ sentence_quiz2 }}"),
    ),
    # -- held out: natural language inference ----------------------------------------------------------------
    "rte": (
        T("does this imply", "9e078fb4-505b-413c-bb5e-3cd16ddcf5d7",
          "{{ premise }}\n\nQuestion: Does it follow from this that \"{{ hypothesis }}\"? Yes or no? ||| "
          + _LABEL_IF, "Yes ||| No"),
        T("GPT-3 style", "8fb1c6aa-20e9-438c-bece-c6af1c746449",
          "{{ premise }}\nClaim: {{ hypothesis }} True or False? ||| " + _LABEL_IF, "True ||| False"),
        T("MNLI crowdsource", "2b52a83c-0021-41fe-b44c-5aaa076d71a2",
          "{{ premise }} Relying only on this text and on common knowledge, is \"{{ hypothesis }}\" certainly "
          "true? Yes or no? ||| " + _LABEL_IF, "Yes ||| No"),
        T("guaranteed true", "2d0d63da-ffcf-4f6e-941a-b8da922be43e",
          "Given that {{ premise }} Must \"{{ hypothesis }}\" then be true? Yes or no? ||| " + _LABEL_IF,
          "Yes ||| No"),
    ),
    "cb": (  # labels: entailment, contradiction, neutral
        T("GPT-3 style", "75db2bc2-3caa-4956-9653-13c7dd6255df",
          "{{ premise }}\nClaim: {{ hypothesis }} True, False, or Neither? ||| " + _LABEL_IF,
          "True ||| False ||| Neither"),
        T("can we infer", "2e76cd0f-68ca-4f03-83ed-11cf15b25a84",
          "Suppose {{ premise }} Could we conclude that \"{{ hypothesis }}\"? Yes, no, or maybe? ||| " + _LABEL_IF,
          "Yes ||| No ||| Maybe"),
        T("always/sometimes/never", "6b0c6191-183d-4731-8050-ab17c909335c",
          "Assume that {{ premise }} Is \"{{ hypothesis }}\" then always, sometimes, or never true? ||| "
          + _LABEL_IF, "Always ||| Never ||| Sometimes"),
        T("claim true/false/inconclusive", "3f43a599-ffdb-490e-8952-c0ce41dd4621",
          "{{ premise }} From that information alone, is the statement \"{{ hypothesis }}\" true, false, or "
          "inconclusive? ||| " + _LABEL_IF, "True ||| False ||| Inconclusive"),
    ),
    "anli": (  # labels: entailment, neutral, contradiction
        T("GPT-3 style", "620aa3fc-d5eb-46f5-a1ee-4c754527aa97",
          "{{ premise }}\nClaim: {{ hypothesis }} True, False, or Neither? ||| " + _LABEL,
          "True ||| Neither ||| False"),
        T("can we infer", "c4ed37ae-d7d7-4197-a725-ef2152fa3b1f",
          "Suppose {{ premise }} Could we conclude that \"{{ hypothesis }}\"? Yes, no, or maybe? ||| " + _LABEL,
          "Yes ||| Maybe ||| No"),
        T("always/sometimes/never", "dbc68425-5c42-43ae-9748-70ce8c5a167e",
          "Assume that {{ premise }} Is \"{{ hypothesis }}\" then always, sometimes, or never true? ||| " + _LABEL,
          "Always ||| Sometimes ||| Never"),
        T("claim true/false/inconclusive", "ec249357-e672-4e7d-b8b6-d97ed7d090c5",
          "{{ premise }} From that information alone, is the statement \"{{ hypothesis }}\" true, false, or "
          "inconclusive? ||| " + _LABEL, "True ||| Inconclusive ||| False"),
    ),
    # -- held out: coreference -------------------------------------------------------------------------------
    "wsc": (
        T("does the pronoun refer to", "212fb8b1-8436-4f64-8f37-a9094fe029f4",
          "{{ text }} In this sentence, is \"{{ span2_text.lower() }}\" a reference to {{ span1_text }}? Yes or "
          "no? ||| " + _LABEL_IF, "No ||| Yes"),
        T("replaced with", "809eacd0-2f6c-4e3a-b52a-57c783879d36",
          "{{ text }} Could the pronoun \"{{ span2_text }}\" in that sentence be swapped for \"{{ span1_text }}\"? "
          "Yes or no? ||| " + _LABEL_IF, "No ||| Yes"),
        T("p is/are r", "87f97aa0-1fa9-4f0b-b8e6-89d3c1f19bd6",
          "Context: {{ text }}\n\n{% if span2_text.lower() == \"they\" or span2_text.lower() == \"them\" %}"
          "Statement: \"{{ span2_text }}\" are {{ span1_text }}.{% else %}Statement: \"{{ span2_text }}\" is "
          "{{ span1_text }}.{% endif %} True or false?\n\nAnswer: ||| " + _LABEL_IF, "False ||| True"),
        T("in other words", "2f17f18b-6daa-44ef-a2dd-dddaf04aec0e",
          "{{ text }}\n\nThat is, {{ text.split(\" \")[span2_index:] | join(\" \") | replace(span2_text, "
          "span1_text) }} True or false? ||| " + _LABEL_IF, "False ||| True"),
    ),
    "winogrande": (
        T("fill in the blank", "ac4e5cb4-f874-460a-8578-ddf1c6541bb4",
          "Fill the _ in this sentence:\n{{ sentence }}\n\nOptions:\n- {{ option1 }}\n- {{ option2 }}\n\nAnswer: "
          "||| " + _WINO_TARGET, "{{ option1 }} ||| {{ option2 }}"),
        T("stand for", "5080f912-fac8-400f-983c-944baf9b10c0",
          "Does the _ in the sentence below mean {{ answer_choices[0] }} or {{ answer_choices[1] }}?\n"
          "{{ sentence }} ||| {{ answer_choices[answer | int - 1] }}", "{{ option1 }} ||| {{ option2 }}"),
        T("underscore refer to", "5af00ba1-86e0-421b-bb97-26bf58df52d3",
          "{{ sentence }}\nWho or what is the _ in this sentence: {{ option1 }} or {{ option2 }}? ||| "
          + _WINO_TARGET, "{{ option1 }} ||| {{ option2 }}"),
    ),
    # -- held out: word sense ----------------------------------------------------------------------------------
    "wic": (
        T("question-context-meaning-with-label", "14e73f39-a0d1-44c2-b9a4-4e48f9f1608e",
          "Is the word \"{{ word }}\" used with the same meaning in both sentences? Yes, No?\n{{ sentence1 }}\n"
          "{{ sentence2 }} ||| " + _LABEL_IF, "No ||| Yes"),
        T("same_sense", "ce8b5a93-1841-4897-84db-b100f1c84f4b",
          "Sentence 1: {{ sentence1 }}\nSentence 2: {{ sentence2 }}\n\nIs \"{{ word }}\" used in the same sense "
          "in both sentences? Yes or no? ||| " + _LABEL_IF, "No ||| Yes"),
        T("affirmation_true_or_false", "725b5ed0-7728-4890-95a4-a74cb7ae1bb4",
          "Sentence A: {{ sentence1 }}\nSentence B: {{ sentence2 }}\n\nThe word \"{{ word }}\" means about the "
          "same thing in A and B. True or False? ||| " + _LABEL_IF, "False ||| True"),
        T("GPT-3-prompt", "c3a0a5d8-cfe9-4a7f-8a3c-3c526e0ad0c6",
          "{{ sentence1 }}\n{{ sentence2 }}\nQuestion: Does '{{ word }}' carry the same sense in the two "
          "sentences above? ||| " + _LABEL_IF, "No ||| Yes"),
    ),
}
