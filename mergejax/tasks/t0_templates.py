"""T0's prompt templates for the datasets of :mod:`mergejax.tasks.t0`, as data.

Every template is one of promptsource's *original-task* templates (``metadata.original_task: true``: the
prompts T0 evaluates with) for that dataset, in the template language of :mod:`mergejax.tasks.t0_prompts`
(a Jinja subset, so the text is promptsource's own), from bigscience-workshop/promptsource (Apache-2.0)
at commit 7dab96a3eeb3717cea633705135ebc488885d709, file ``promptsource/templates/<SOURCES[dataset]>/
templates.yaml``, keyed by the template's ``id``. Fields carry promptsource's (Hugging Face) names;
:mod:`mergejax.tasks.t0` maps the TFDS copies of the datasets onto them. Where a template differs from
promptsource's, ``note`` says how; ``references`` (every acceptable answer of a generation template) is
ours: promptsource has one target.

Left out (original-task templates the TFDS data cannot render, or that score differently):

* trec ``fine_grained_open`` and ``fine_grained_open_context_first``: 50 fine labels in Hugging Face's
  order (TFDS has 47, in another order; "description" appears twice among the answer choices).
* hellaswag ``complete_first_then``: needs ``ctx_a`` / ``ctx_b``, which the TFDS copy joins into ``context``.
* super_glue/record's eight "continuation choices" templates (metric Accuracy): the dataset is scored by
  generation (SQuAD F1) with its ten "Squad" templates.
"""

from __future__ import annotations

from mergejax.tasks.t0_prompts import Template

T = Template

PROMPTSOURCE_COMMIT = "7dab96a3eeb3717cea633705135ebc488885d709"

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
  """Where a template comes from, e.g. ``promptsource/templates/imdb/templates.yaml#02ff2949-...``."""
  return f"promptsource/templates/{SOURCES[dataset]}/templates.yaml#{template.id}"


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "imdb": (
        T(name="Movie Expressed Sentiment 2", id="02ff2949-0f45-4d97-941e-6fa4c0afbc2d",
          jinja=("The following movie review expresses what sentiment? {{text}} ||| {{ answer_choices "
                 "[label] }}"),
          answer_choices="negative ||| positive"),
        T(name="Reviewer Opinion bad good choices", id="2351d12a-e630-4d19-8b41-e199266e38f7",
          jinja=("{{text}} Did the reviewer find this movie {{\"good or bad\"}}? ||| {{ answer_choices "
                 "[label] }}"),
          answer_choices="bad ||| good"),
        T(name="Sentiment with choices ", id="5f372fb1-795a-47b6-8ddf-c4fd1579e76a",
          jinja=("{{text}} \n"
                 "Is this review {{\"positive or negative\"}}? ||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="negative ||| positive"),
        T(name="Reviewer Sentiment Feeling", id="866474a5-1498-46b7-bfee-ac0c5160707f",
          jinja="{{text}} How does the viewer feel about the movie? ||| {{ answer_choices [label] }}",
          answer_choices="negative ||| positive"),
        T(name="Writer Expressed Sentiment", id="96538f30-f2c1-430e-8fc6-936a16966d9c",
          jinja=("{{text}} What sentiment does the writer express for the movie? ||| {{ "
                 "answer_choices [label] }}"),
          answer_choices="negative ||| positive"),
        T(name="Movie Expressed Sentiment", id="af51297c-38a3-4d6c-a8b5-04b1243d7443",
          jinja="{{text}} The sentiment expressed for the movie is ||| {{ answer_choices [label] }}",
          answer_choices="negative ||| positive"),
        T(name="Text Expressed Sentiment", id="b93b74ac-fe95-40b4-9610-318b46ab820f",
          jinja=("{{text}} What is the sentiment expressed in this text? ||| {{ answer_choices "
                 "[label] }}"),
          answer_choices="negative ||| positive"),
        T(name="Reviewer Enjoyment Yes No", id="bd82ba0f-01d4-4fa1-bf8d-07e392c00cd9",
          jinja="{{text}} Did the reviewer enjoy the movie? ||| {{ answer_choices [label] }}",
          answer_choices="No ||| Yes"),
        T(name="Reviewer Expressed Sentiment", id="c70d1687-2421-49a2-9553-91b8bac4cfbe",
          jinja=("{{text}} What is the sentiment expressed by the reviewer for the movie? ||| {{ "
                 "answer_choices [label] }}"),
          answer_choices="negative ||| positive"),
        T(name="Reviewer Enjoyment", id="e01970ab-42c0-4e6e-a08f-4940d889ef37",
          jinja=("{{text}} How does the reviewer feel about the movie? ||| {{ answer_choices [label] "
                 "}}"),
          answer_choices="They didn't like it! ||| They loved it"),
    ),
    "yelp_polarity": (
        T(name="experience_good_bad", id="01dc166f-0774-4be0-b606-2beb2252d9b5",
          jinja=("{{ text }}\n"
                 "Overall, the experience is ||| {{ answer_choices[label] }}"),
          answer_choices="bad ||| good"),
        T(name="rating_high_low", id="13f829c1-ca58-4efd-b1f0-14446b176871",
          jinja=("{{ text }}\n"
                 "Based on that, my rating for this place is ||| {{ answer_choices[label] }}"),
          answer_choices="low ||| high"),
        T(name="regret_yes_or_no", id="19e426b1-26e6-462e-a556-0ec3b9402e13",
          jinja=("{{ text }}\n"
                 "Did I regret it? ||| {{ answer_choices[label] }}"),
          answer_choices="Yes ||| No"),
        T(name="come_again", id="363d31a1-6706-47fd-ad7e-d648cf23bbaa",
          jinja=("{{ text }}\n"
                 "If you ask me whether I will come again, my answer is ||| {{ answer_choices[label] "
                 "}}"),
          answer_choices="no ||| yes"),
        T(name="format_come_again", id="a5ec86fb-046d-482b-a552-8499b8b59b8f",
          jinja=("Review:\n"
                 "{{ text }}\n"
                 "\n"
                 "Will you come here again? |||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="No ||| Yes"),
        T(name="like_dislike", id="e0cc8573-5eda-413a-a20f-1da3e7077736",
          jinja=("{{ text }}\n"
                 "That being said, I ||| {{ answer_choices[label] }}"),
          answer_choices="dislike this place. ||| like this place."),
        T(name="format_good_bad", id="e14da8aa-2995-4aed-a90b-adf2bec2b90e",
          jinja=("Review:\n"
                 "{{ text }}\n"
                 "\n"
                 "Overall rating: |||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="Bad ||| Good"),
        T(name="place_good_bad", id="e7bb6ec7-921a-4889-93e9-84d957c6035b",
          jinja=("{{ text }}\n"
                 "In a nutshell, this place is ||| {{ answer_choices[label] }}"),
          answer_choices="bad ||| good"),
        T(name="like_dislike_2", id="fb412829-d8a3-4faa-8443-a2ebe6545f6c",
          jinja=("{{ text }}\n"
                 "If you ask me whether I like this place? The answer is ||| {{ answer_choices[label] "
                 "}}"),
          answer_choices="no ||| yes"),
    ),
    "ag_news": (
        T(name="classify_question_first", id="24e44a81-a18a-42dd-a71c-5b31b2d2cb39",
          jinja=("What label best describes this news article?\n"
                 "{{text}} ||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="World politics ||| Sports ||| Business ||| Science and technology"),
        T(name="classify_with_choices_question_first", id="8fdc1056-1029-41a1-9c67-354fc2b8ceaf",
          jinja=("Is this a piece of news regarding {{\"world politics, sports, business, or science "
                 "and technology\"}}?\n"
                 "{{text}} \n"
                 "||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="World politics ||| Sports ||| Business ||| Science and technology"),
        T(name="recommend", id="918267e0-af68-4117-892d-2dbe66a58ce9",
          jinja=("Would you recommend the following article to a {{\"politician\"}}, an {{\"athlete\"}}, "
                 "a {{\"business executive\"}}, or a {{\"scientist\"}}?\n"
                 "\n"
                 "{{ text }}\n"
                 "|||\n"
                 "{{answer_choices[label]}}"),
          answer_choices="Politician ||| Athlete ||| Business executive ||| Scientist"),
        T(name="which_section_choices", id="9345df33-4f23-4944-a33c-eef94e626862",
          jinja=("{{text}} \n"
                 "\n"
                 "Which of the following sections of a newspaper would this article likely appear in? "
                 "{{\"World News\"}}, {{\"Sports\"}}, {{\"Business\"}}, or {{\"Science and Technology\"}}? "
                 "||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="World News ||| Sports ||| Business ||| Science and Technology"),
        T(name="which_section", id="98534347-fff7-4c39-a795-4e69a44791f7",
          jinja=("{{text}} \n"
                 "\n"
                 "Which section of a newspaper would this article likely appear in? ||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="World News ||| Sports ||| Business ||| Science and Technology"),
        T(name="classify_with_choices", id="b401b0ee-6ffe-4a91-8e15-77ee073cd858",
          jinja=("{{text}} \n"
                 "Is this a piece of news regarding {{\"world politics, sports, business, or science "
                 "and technology\"}}? ||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="World politics ||| Sports ||| Business ||| Science and technology"),
        T(name="classify", id="cb355f33-7e8c-4455-a72b-48d315bd4f60",
          jinja=("{{text}} \n"
                 "What label best describes this news article? ||| \n"
                 "{{answer_choices[label] }}"),
          answer_choices="World politics ||| Sports ||| Business ||| Science and technology"),
    ),
    "trec": (
        T(name="what_category_best_describe", id="21d04668-c5b3-4418-bbb6-663f1ffdb97c",
          jinja=("Categories: {{', '.join(answer_choices)}}\n"
                 "\n"
                 "What category best describes: {{text}} \n"
                 "Answer: ||| {{ answer_choices [coarse_label] }}"),
          answer_choices=("Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| "
                          "Quantity")),
        T(name="pick_the_best_descriptor", id="6c391f4f-027b-4425-88de-1dbb6aa706ee",
          jinja=("Question: {{text}}\n"
                 "\n"
                 "Descriptors: {{', '.join(answer_choices)}}\n"
                 "\n"
                 "Best Descriptor?\n"
                 "|||\n"
                 "{{answer_choices[coarse_label]}}"),
          answer_choices=("Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| "
                          "Quantity")),
        T(name="which_category_best_describes", id="7a3ed4dd-af89-493c-8efb-c67622f63034",
          jinja=("Which category best describes the following question: {{text}} \n"
                 "\n"
                 "Choose from the following list: \n"
                 "{{', '.join(answer_choices)}}\n"
                 " ||| {{ answer_choices [coarse_label] }}"),
          answer_choices=("Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| "
                          "Quantity")),
        T(name="trec1", id="861d1a48-1113-4f35-b777-2b2f12ab9d5d",
          jinja=("{{text}}\n"
                 "\n"
                 "Is this asking about {{(', ').join(answer_choices)}}?\n"
                 "|||\n"
                 "{{ answer_choices [coarse_label] }}"),
          answer_choices=("Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| "
                          "Quantity")),
        T(name="trec2", id="aad2def1-b694-40ee-9c26-3d1cf5c577da",
          jinja=("Is the following question asking about {{', '.join(answer_choices)}}?\n"
                 "\n"
                 "{{text}}\n"
                 "|||\n"
                 "{{ answer_choices [coarse_label] }}"),
          answer_choices=("Abbreviation ||| Entity ||| Description ||| Person ||| Location ||| "
                          "Quantity")),
    ),
    "qqp": (
        T(name="quora", id="8e711799-a57c-4941-833b-466bedfb80ad",
          jinja=("I'm an administrator on the website Quora. There are two posts, one that asks "
                 "\"{{question1}}\" and another that asks \"{{question2}}\". I can merge questions if "
                 "they are asking the same thing. Can I merge these two questions? ||| {{ "
                 "answer_choices[label] }}"),
          answer_choices="no ||| yes"),
        T(name="duplicate or not", id="94972071-a726-42a3-a726-13f414b65e67",
          jinja=("{{question1}}\n"
                 "{{question2}}\n"
                 "Pick one: These questions are \"{{\"duplicates\"}}\" or \"{{\"not duplicates\"}}\".\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="not duplicates ||| duplicates"),
        T(name="same thing", id="a45ad5cd-a3ba-4ab2-a728-a9ea0f27102b",
          jinja=("Are the questions \"{{question1}}\" and \"{{question2}}\" asking the same thing? ||| {{ "
                 "answer_choices[label] }}"),
          answer_choices="no ||| yes"),
        T(name="meaning", id="c0724198-97e7-44a1-89d8-c51e97ce0b04",
          jinja=("Question 1: {{question1}}\n"
                 "Question 2: {{question2}}\n"
                 "\n"
                 "Do these two questions convey the same meaning? Yes or no? ||| "
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="duplicate", id="fd244bd3-ca3b-4e4f-9722-fd006c50e157",
          jinja=("I received the questions \"{{question1}}\" and \"{{question2}}\". Are they duplicates? "
                 "||| {{ answer_choices[label] }}"),
          answer_choices="no ||| yes"),
    ),
    "paws": (
        T(name="task_description-no-label", id="0be7cecd-b427-4ec9-9b0e-666d6dae0063",
          jinja=("Determine if the following two sentences paraphrase each other or not.\n"
                 "Sent 1: {{sentence1}}\n"
                 "Sent 2: {{sentence2}}\n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="Meaning", id="472fe5eb-b499-4952-a930-f72f4ca9ed43",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "Question: Do Sentence 1 and Sentence 2 express the same meaning? Yes or No? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="context-question-no-label", id="4c8d4e4c-eae4-45f6-bdf0-d132ae198d09",
          jinja=("{{sentence1}}\n"
                 "Is that a paraphrase of the following sentence?\n"
                 "{{sentence2}}?\n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="Rewrite-no-label", id="678400f8-1a5c-4a40-b5ef-abeaa41e20ec",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "Question: Can we rewrite Sentence 1 to Sentence 2? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="context-question", id="7c205a61-64d4-4673-bb8e-bfa77562eede",
          jinja=("{{sentence1}}\n"
                 "Is that a paraphrase of the following sentence?\n"
                 "{{sentence2}}?\n"
                 "Yes or No.\n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="Concatenation", id="8c259e88-7646-4a50-a4ca-90393920f281",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "Question: Does Sentence 1 paraphrase Sentence 2? Yes or No? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="Concatenation-no-label", id="a6d9ec4e-acd4-46cd-9eeb-ae32e0ab8076",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "Question: Does Sentence 1 paraphrase Sentence 2? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="Meaning-no-label", id="d5239f5f-2014-47c9-a0c1-4896f76f82a4",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "Question: Do Sentence 1 and Sentence 2 express the same meaning? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="PAWS-ANLI GPT3", id="d9911dad-75fe-4506-9843-3a46ba5e49be",
          jinja=("{{sentence1}} Question: {{sentence2}} True or False? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="False ||| True"),
        T(name="Rewrite", id="dd52359b-dc56-4241-8179-c98c636f0335",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "Question: Can we rewrite Sentence 1 to Sentence 2? Yes or No? \n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
        T(name="PAWS-ANLI GPT3-no-label", id="f0866713-c59a-4c5d-a307-95e80a935f99",
          jinja=("{{sentence1}} Question: {{sentence2}} Paraphrase or not?\n"
                 "||| \n"
                 "{{answer_choices[label]}}"),
          answer_choices="No ||| Yes"),
    ),
    "common_gen": (
        T(name="Given concepts - type 2", id="45778bd5-fddc-4c60-a77b-4eff5bed1c0b",
          jinja=("Ignoring the order of the concepts: {{ concepts | join(\", \") }}; \n"
                 "Generate a sentence with all the concepts :\n"
                 "|||\n"
                 "{{target}}"),
          references="references if references | length > 0 else [target]"),
        T(name="Put together", id="684f1859-0b8d-4efe-82e1-7218838813cd",
          jinja=("Put the concepts together to form a sentence: {{ concepts | join(\", \") }}.\n"
                 "|||\n"
                 "{{target}}"),
          references="references if references | length > 0 else [target]"),
        T(name="choice in concept centric sentence generation", id="a4991cc7-cc91-4f37-af80-1983a02eb950",
          jinja=("Construct a sentence with the word {{ concepts | choice }}. \n"
                 "\n"
                 "Hint: Use {{concepts | join(\", \")}} to restrict the output sentence.\n"
                 "|||\n"
                 "{{target}}"),
          references="references if references | length > 0 else [target]"),
        T(name="random task template prompt", id="b2033df4-7922-45b8-a113-e7784135cea9",
          jinja=("{% set seq = [ \n"
                 "'From the concepts mentioned below, generate a sentence:', \n"
                 "'Convert the concepts to a sentence:', \n"
                 "'Given the list of concepts, write a sentence:'\n"
                 "] %} \n"
                 "{{ seq | choice }}\n"
                 "{{ concepts | join(\", \") }}\n"
                 "|||\n"
                 "{{target}}"),
          references="references if references | length > 0 else [target]"),
        T(name="Example prompt", id="fa787974-86dd-4f66-b2d7-6d3523ce00e1",
          jinja=("Humans can easily string together abstract concepts to form a coherent sentence. \n"
                 "For example, with the concepts {{ concepts | join(\", \") }}, a simple sentence can "
                 "be  \n"
                 "|||\n"
                 "{{target}}"),
          references="references if references | length > 0 else [target]"),
        T(name="Given concepts type 1", id="fbeebb4f-cba1-4bc4-80ec-758a3c134033",
          jinja=("Given the list of concepts: {{ concepts | join(\", \") }}; \n"
                 "Generate a sentence with all the concepts :\n"
                 "|||\n"
                 "{{target}}"),
          references="references if references | length > 0 else [target]"),
    ),
    "wiki_bio": (
        T(name="who", id="0e240546-0d3c-4049-9cc7-32039a6e50ff",
          jinja=("Facts:\n"
                 "{% for n in range (input_text[\"table\"][\"column_header\"]|length) %}\n"
                 "{% if input_text[\"table\"][\"column_header\"][n] != \"article_title\" %}\n"
                 "- {{input_text[\"table\"][\"column_header\"][n].replace(\"_\",\" \") }}: "
                 "{{input_text[\"table\"][\"content\"][n] }}\n"
                 "{% endif %}\n"
                 "{% endfor %}\n"
                 "Based on these bullet points, write a short biography describing the life of "
                 "{{input_text[\"context\"]}}. |||\n"
                 "{{target_text}}")),
    ),
    "cnn_dailymail": (
        T(name="write_an_outline", id="0556fd07-f7de-4daf-a0ae-4cda4fc239c8",
          jinja=("Can you write an outline of the following article in a few points?\n"
                 "\n"
                 "Article: {{article}}|||\n"
                 "{{highlights}}")),
        T(name="news_summary", id="1c446bde-b3e6-4629-860f-9125681c72a1",
          jinja=("Summarise the article:\n"
                 "\n"
                 "{{article}} |||\n"
                 "{{highlights}}")),
        T(name="2_or_3_sentences", id="6e46894f-b5ff-4259-a691-63f1da8405da",
          jinja=("In 2 or 3 sentences, what are the main points one should remember from this news "
                 "article?\n"
                 "\n"
                 "Article: {{article}} |||\n"
                 "{{highlights}}")),
        T(name="tldr_summary", id="892cbf90-2c19-4664-943e-a004a0c9a7fa",
          jinja=("Could you please generate a TLDR (Too Long Didn't Read) summary of the following "
                 "news article?\n"
                 "\n"
                 "Article: {{article}} |||\n"
                 "{{highlights}}")),
        T(name="news_card_view", id="9b7c6abf-5110-4b31-8345-be6b2eeea580",
          jinja=("Condense the article down to the essentials to present it in the form of short "
                 "cards in mobile news apps:\n"
                 "\n"
                 "{{article}} |||\n"
                 "{{highlights}}")),
        T(name="sum_in_brief", id="c20ac3c5-da85-408a-bba9-8b12ef2ae379",
          jinja="Sum the following article in brief: {{article}}|||{{highlights}}"),
        T(name="news_stock", id="e047b4ec-abff-4b36-896a-83f5f1ea6759",
          jinja=("Extract key points from the article based on which the stock market could react:\n"
                 "\n"
                 "{{article}} |||\n"
                 "{{highlights}}")),
    ),
    "gigaword": (
        T(name="generate_summary_for_this", id="0a45ae54-4585-4d13-9540-890125d614e0",
          jinja=("{{document}}\n"
                 "\n"
                 "===\n"
                 "\n"
                 "Generate a title for this article: ||| {{summary}}")),
        T(name="make_a_title", id="696e561e-1311-4a3e-9ca1-51d1fd77392b",
          jinja=("Make a title for this article: {{document}} |||\n"
                 "\n"
                 "{{summary}}")),
        T(name="first_sentence_title", id="7ad1a48a-195d-4c0c-aea5-df0689589f27",
          jinja=("First sentence of the article: {{document}}\n"
                 "\n"
                 "Title: ||| {{summary}}")),
        T(name="TLDR", id="90c34acf-2f42-4e66-98dc-7453f7e60e60",
          jinja=("{{document}}\n"
                 "\n"
                 "TL;DR: ||| {{summary}}")),
        T(name="write_its_sentence", id="93f0c400-501f-43ad-861b-4f67564f2e8f",
          jinja=("{{document}}\n"
                 "\n"
                 "===\n"
                 "\n"
                 "Given the above sentence, write its title: ||| {{summary}}")),
        T(name="write_a_title_for_this_sentence", id="a0e699bf-1268-4929-ad13-438c08644118",
          jinja=("Write a title for this sentence: {{document}} \n"
                 "\n"
                 "Title: ||| {{summary}}")),
        T(name="in_a_nutshell", id="ac53a797-4d59-455a-b0e6-0e4d7d85f029",
          jinja="{{document}} In a nutshell, ||| {{summary}}"),
    ),
    "cosmos_qa": (
        T(name="description_context_question_answer_text", id="08e20b79-d1c0-4717-b538-f1a313c2b7d2",
          jinja=("Read the following context and choose the best option to answer the question.\n"
                 "Context: {{ context }}\n"
                 "Question: {{ question }}\n"
                 "Options: \n"
                 "- {{ answer_choices | join(\"\\n - \") }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="{{answer0}} ||| {{answer1}} ||| {{answer2}} ||| {{answer3}}"),
        T(name="description_context_question_text", id="67d6ba13-4958-4e5e-842c-ada92aead6cc",
          jinja=("Read the following context and answer the question.\n"
                 "Context: {{ context }}\n"
                 "Question: {{ question }}\n"
                 "Answer:\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="{{answer0}} ||| {{answer1}} ||| {{answer2}} ||| {{answer3}}"),
        T(name="description_context_question_answer_id", id="693c47c6-f17c-417a-af70-bc20e71b4ed4",
          jinja=("Read the following context and choose the best option to answer the question.\n"
                 "Context: {{ context }}\n"
                 "Question: {{ question }}\n"
                 "Options: \n"
                 "A. {{ answer0 }}\n"
                 "B. {{ answer1 }}\n"
                 "C. {{ answer2 }}\n"
                 "D. {{ answer3 }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="A ||| B ||| C ||| D"),
        T(name="context_description_question_answer_text", id="6b9a24cc-054e-40d6-8abf-261443122f3a",
          jinja=("{{ context }}\n"
                 "According to the above context, choose the best option to answer the following "
                 "question.\n"
                 "Question: {{ question }}\n"
                 "Options:\n"
                 "- {{answer_choices | join(\"\\n - \")}}\n"
                 "|||\n"
                 "{{answer_choices[label]}}"),
          answer_choices="{{answer0}} ||| {{answer1}} ||| {{answer2}} ||| {{answer3}}"),
        T(name="no_prompt_id", id="71325300-1f16-4a68-97c7-a03457f00cc7",
          jinja=("{{ context }}\n"
                 "{{ question }}\n"
                 "A. {{ answer0 }}\n"
                 "B. {{ answer1 }}\n"
                 "C. {{ answer2 }}\n"
                 "D. {{ answer3 }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="A ||| B ||| C ||| D"),
        T(name="no_prompt_text", id="85e9ae2c-fbb7-47ed-980c-56da5299e9af",
          jinja=("{{ context }}\n"
                 "{{ question }}\n"
                 "- {{ answer_choices | join(\"\\n - \") }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="{{answer0}} ||| {{answer1}} ||| {{answer2}} ||| {{answer3}}"),
        T(name="context_description_question_answer_id", id="8a60255c-d44d-4f20-a631-ae1c0c9a7d68",
          jinja=("{{ context }}\n"
                 "According to the above context, choose the best option to answer the following "
                 "question.\n"
                 "Question: {{ question }}\n"
                 "Options:\n"
                 "A. {{ answer0 }}\n"
                 "B. {{ answer1 }}\n"
                 "C. {{ answer2 }}\n"
                 "D. {{ answer3 }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="A ||| B ||| C ||| D"),
        T(name="context_question_description_answer_id", id="9dc80101-516d-448e-8e05-a62b4acead3b",
          jinja=("{{ context }}\n"
                 "{{ question }}\n"
                 "Pick the best answer from the following options:\n"
                 "A. {{ answer0 }}\n"
                 "B. {{ answer1 }}\n"
                 "C. {{ answer2 }}\n"
                 "D. {{ answer3 }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="A ||| B ||| C ||| D"),
        T(name="context_description_question_text", id="c07c459e-f1f7-409e-9da7-fe5c993a4933",
          jinja=("{{ context }}\n"
                 "According to the above context, answer the following question.\n"
                 "{{ question }}\n"
                 "|||\n"
                 "{{answer_choices[label]}}"),
          answer_choices="{{answer0}} ||| {{answer1}} ||| {{answer2}} ||| {{answer3}}"),
        T(name="context_question_description_answer_text", id="d5499348-5cb3-467b-a543-206b5dd9806e",
          jinja=("{{ context }}\n"
                 "{{ question }}\n"
                 "Pick the best answer from the following options:\n"
                 "- {{ answer_choices | join(\"\\n - \") }}\n"
                 "|||\n"
                 "{{ answer_choices[label] }}"),
          answer_choices="{{answer0}} ||| {{answer1}} ||| {{answer2}} ||| {{answer3}}"),
    ),
    "qasc": (
        T(name="qa_with_separated_facts_1", id="40ef67db-dff3-4e7b-b167-f7e54b400c74",
          jinja=("{{ fact1[0]|capitalize }}{{ fact1[1:]|trim|trim('.') }}, and {{fact2[0]|lower }}{{ "
                 "fact2[1:]|trim|trim('.') }}. Given these facts, {{ question[0]|lower "
                 "}}{{question[1:]|trim('?') }} among the following options:\n"
                 "- {{answer_choices | join(\"\\n - \") }}\n"
                 "\n"
                 "||| \n"
                 "\n"
                 "{% for choice in choices.label %} {% if choice == answerKey %}{{ "
                 "answer_choices[loop.index - 1] }}{% endif %}{% endfor %} "),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="qa_with_separated_facts_3", id="5d63c186-e047-49dd-b5fd-c4a574f6f0e2",
          jinja=("Fact 1: {{ fact1[0]|capitalize }}{{ fact1[1:]|trim|trim('.') }}.\n"
                 "\n"
                 "Fact 2: {{fact2[0]|capitalize }}{{ fact2[1:]|trim|trim('.') }}.\n"
                 "\n"
                 "Given the two facts above, {{ question[0]|lower }}{{question[1:]|trim('?') }}?\n"
                 "\n"
                 "||| \n"
                 "\n"
                 "{% for choice in choices.label %} {% if choice == answerKey %}{{ "
                 "answer_choices[loop.index - 1] }}{% endif %}{% endfor %}  "),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="qa_with_separated_facts_4", id="604dd379-21f1-4d30-af2f-22f9a8a97ceb",
          jinja=("You are presented with the question \"{{ question }}\" and the following answer "
                 "choices: \n"
                 "- {{answer_choices | join(\"\\n - \") }}\n"
                 "\n"
                 "Now knowing that {{ fact1[0]|lower }}{{ fact1[1:]|trim|trim('.') }} and "
                 "{{fact2[0]|lower }}{{ fact2[1:]|trim|trim('.') }}, choose the best answer.\n"
                 "\n"
                 "||| \n"
                 "\n"
                 "{% for choice in choices.label %} {% if choice == answerKey %}{{ "
                 "answer_choices[loop.index - 1] }}{% endif %}{% endfor %} "),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="qa_with_separated_facts_5", id="67cb1b35-e5d4-490b-beb8-dc9c0be9c298",
          jinja=("You are presented with the quiz \"{{ question }}\" \n"
                 "\n"
                 "But you don't know the answer, so you turn to your teacher to ask for hints. He "
                 "says that \"{{ fact1[0]|lower }}{{ fact1[1:]|trim|trim('.') }}\" and "
                 "\"{{fact2[0]|lower }}{{ fact2[1:]|trim|trim('.') }}\". \n"
                 "\n"
                 "So, what's the best answer to the question?\n"
                 "\n"
                 "||| \n"
                 "\n"
                 "{% for choice in choices.label %} {% if choice == answerKey %}{{ "
                 "answer_choices[loop.index - 1] }}{% endif %}{% endfor %}   "),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="qa_with_separated_facts_2", id="c7cd51f1-ea49-4d6a-a422-46624333b7b1",
          jinja=("Fact 1: {{ fact1[0]|capitalize }}{{ fact1[1:]|trim|trim('.') }}.\n"
                 "\n"
                 "Fact 2: {{fact2[0]|capitalize }}{{ fact2[1:]|trim|trim('.') }}.\n"
                 "\n"
                 "Given the two facts above, answer the question \"{{ question }}\" with the following "
                 "options: \n"
                 "- {{answer_choices | join(\"\\n - \") }}\n"
                 "\n"
                 "||| \n"
                 "\n"
                 "{% for choice in choices.label %} {% if choice == answerKey %}{{ "
                 "answer_choices[loop.index - 1] }}{% endif %}{% endfor %} "),
          answer_choices="{{choices.text | join(\"|||\")}}"),
    ),
    "squad_v2": (
        T(name="Questions with Context", id="17b83a3f-f748-42e6-9cdf-b2951dd8299d",
          jinja=("{% set seq = [\n"
                 "'Answer the question depending on the context.',\n"
                 "'What is the answer?',\n"
                 "] %}\n"
                 "\n"
                 "{{ seq | choice }}\n"
                 "Context: {{context}};\n"
                 "Question: {{question}};\n"
                 "Answer: |||\n"
                 "{% if answers.text == [] %}\n"
                 "Answer not in context\n"
                 "{% else %}\n"
                 "{{answers.text[0]}}\n"
                 "{% endif %}"),
          references="answers.text if answers.text | length > 0 else [\"Answer not in context\"]"),
        T(name="Questions with Context - Without Prompt Keywords", id="8bea1123-fd8d-4bac-96bf-b8a289ee74b3",
          jinja=("{% set seq = [\n"
                 "'Can you tell me ',\n"
                 "'Please tell me ',\n"
                 "'Tell me ',\n"
                 "'From the passage, ',\n"
                 "'I want to know ',\n"
                 "'I want to ask ',\n"
                 "'What is the answer to: ',\n"
                 "'Find the answer to: ',\n"
                 "'Answer: ',\n"
                 "'',\n"
                 "] %}\n"
                 "{{context}} {{ seq | choice }}{{question}}|||\n"
                 "{% if answers.text == [] %}\n"
                 "Answer not in context\n"
                 "{% else %}\n"
                 "{{answers.text[0]}}\n"
                 "{% endif %}"),
          references="answers.text if answers.text | length > 0 else [\"Answer not in context\"]"),
        T(name="Questions with Context +unanswerable", id="b14c9843-fd56-42ff-817d-39e41963c847",
          jinja=("{% set seq = [\n"
                 "'Answer the question depending on the context.',\n"
                 "'What is the answer?',\n"
                 "] %}\n"
                 "\n"
                 "{{ seq | choice }}\n"
                 "Context: {{context}};\n"
                 "Question: {{question}};\n"
                 "If you can't find the answer, please respond \"unanswerable\".\n"
                 "Answer: |||\n"
                 "{% if answers.text == [] %}\n"
                 "unanswerable\n"
                 "{% else %}\n"
                 "{{answers.text[0]}}\n"
                 "{% endif %}"),
          references="answers.text if answers.text | length > 0 else [\"unanswerable\"]"),
        T(name="Questions with Context - Without Prompt Keywords +unanswerable",
          id="e1630107-8f5d-44ce-8ccd-6fa80da80328",
          jinja=("{% set seq = [\n"
                 "'Can you tell me ',\n"
                 "'Please tell me ',\n"
                 "'Tell me ',\n"
                 "'From the passage, ',\n"
                 "'I want to know ',\n"
                 "'I want to ask ',\n"
                 "'What is the answer to: ',\n"
                 "'Find the answer to: ',\n"
                 "'Answer: ',\n"
                 "'',\n"
                 "] %}\n"
                 "{{context}} {{ seq | choice }}{{question}} If you can't find the answer, please "
                 "respond \"unanswerable\". |||\n"
                 "{% if answers.text == [] %}\n"
                 "unanswerable\n"
                 "{% else %}\n"
                 "{{answers.text[0]}}\n"
                 "{% endif %}"),
          references="answers.text if answers.text | length > 0 else [\"unanswerable\"]"),
    ),
    "record": (
        T(name="Which one is the placeholder?", id="014b669e-2e3b-40ce-bdde-418966c7d666",
          jinja=("{{ passage }} \n"
                 "{{ query }} \n"
                 "Which one is the \"{{\"@placeholder\"}}\"? {{ entities | join(\", \") }}? ||| {% if ( "
                 "answers | length ) > 0 %} {{ answers | choice }}\n"
                 "{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
        T(name="corrupted", id="11e27d59-b1f5-43a1-9ccc-17f1c3249173",
          jinja=("The following document has been corrupted. Tell me what \"{{\"@placeholder\"}}\" is "
                 "referring to.\n"
                 "\n"
                 "Document: {{ passage }} \n"
                 "{{ query }} \n"
                 "||| {% if ( answers | length ) > 0 %}{{ answers | choice }}\n"
                 "{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
        T(name="choose_between", id="441c70e3-095a-44a1-8163-bc3b666b7ea1",
          jinja=("{{ passage }} \n"
                 "{{ query }} \n"
                 "\n"
                 "You should decide what \"{{\"@placeholder\"}}\" is referring to. Choose between:\n"
                 "- {{answer_choices | join(\"\\n- \")}}\n"
                 "||| {% if ( answers | length ) > 0 %}{{ answers | choice }}\n"
                 "{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
        T(name="In the question above, the placeholder stands for", id="91555c1c-c1e4-469b-a2a4-fc952ce1a145",
          jinja=("{{ passage }} \n"
                 "{{ query }} \n"
                 "In the question above, the \"{{\"@placeholder\"}}\" stands for ||| {% if ( answers | "
                 "length ) > 0 %}{{ answers | choice }}{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
        T(name="What could the placeholder be?", id="99dd38ce-32f3-4d58-93c5-59821002b9cc",
          jinja=("{{ passage }} \n"
                 "{{ query }} \n"
                 "What could the \"{{\"@placeholder\"}}\" be? {{ entities | join(\", \") }}? ||| {% if ( "
                 "answers | length ) > 0 %}{{ answers | choice }}{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
        T(name="trying_to_decide", id="9b688cf3-28bf-4f33-94cf-e73e4fa8c608",
          jinja=("{{ passage }}\n"
                 "{{ query }}\n"
                 "\n"
                 "I am trying to decide what \"{{\"@placeholder\"}}\" means in the previous text.\n"
                 "Help by choosing an option between:\n"
                 "- {{ entities | join(\"\\n- \") }}\n"
                 "||| {% if ( answers | length ) > 0 %}\n"
                 "{{ answers | choice }}\n"
                 "{% endif %}"),
          answer_choices="{{entities | join(\"|||\")}}",
          references="answers"),
        T(name="the placeholder refers to…", id="a5ed27ed-162b-4ac1-9c7a-85059d5214be",
          jinja=("{{ passage }} \n"
                 "{{ query }} \n"
                 "Here, the placeholder refers to ||| {% if ( answers | length ) > 0 %}{{ answers | "
                 "choice }}\n"
                 "{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
        T(name="exercise", id="d3fce74e-0d9d-404a-a009-9ebbf5794c2c",
          jinja=("Exercise: Extract from the text the correct entity that \"{{\"@placeholder\"}}\" is "
                 "referring to.\n"
                 "\n"
                 "{{ passage }}\n"
                 "{{ query }}\n"
                 "||| {% if ( answers | length ) > 0 %}\n"
                 "{{ answers | choice }}\n"
                 "{% endif %}"),
          answer_choices="{{entities | join(\"|||\")}}",
          references="answers"),
        T(name="pick_one_option", id="de5b635e-c2f4-40bb-81ac-650f1b45564b",
          jinja=("{{ passage }}\n"
                 "{{ query }}\n"
                 "\n"
                 "Pick one option, \"{{\"@placeholder\"}}\" refers to:\n"
                 "- {{answer_choices | join(\"\\n- \")}}\n"
                 "||| {% if ( answers | length ) > 0 %}\n"
                 "{{ answers | choice }}\n"
                 "{% endif %}"),
          answer_choices="{{entities | join(\"|||\")}}",
          references="answers"),
        T(name="Can you figure out…", id="e68d13c5-df75-4de0-b59e-f2eaf4af6ce7",
          jinja=("{{ passage }} \n"
                 "{{ query }} \n"
                 "Can you figure out what does the \"{{\"@placeholder\"}}\" mean? It means ||| {% if ( "
                 "answers | length ) > 0 %}{{ answers | choice }}{% endif %}"),
          answer_choices="{{ entities | join(\"|||\") }}",
          references="answers"),
    ),
    "web_questions": (
        T(name="get_the_answer", id="427785bc-a8f3-4c86-bd43-e54447a58615",
          jinja="Give me the correct facts to answer this: {{question}} ||| {{answers | choice}}",
          references="answers"),
        T(name="potential-correct-answer", id="9f4cd4a4-79e5-40b2-bb0d-f9a86396511a",
          jinja=("Give me a possible correct answer to the question \"{{ question }}\" ||| {{ answers | "
                 "choice }}"),
          references="answers"),
        T(name="whats_the_answer", id="bfed45a7-b36c-440b-8c94-f117cc6c9f34",
          jinja="What's the answer to that question: {{question}} ||| {{answers | choice}}",
          references="answers"),
        T(name="short_general_knowledge_q", id="df08956c-035b-4216-af1c-61250617faa4",
          jinja="Short general knowledge question: {{question}} ||| {{answers | choice}}",
          references="answers"),
        T(name="question-answer", id="e5c72a6b-8ab4-4219-9f41-debf7224884c",
          jinja="{{ question|capitalize }} ||| {{ answers | choice }}",
          references="answers"),
    ),
    "arc_easy": (
        T(name="pick_the_most_correct_option", id="033498ca-3d9a-47e3-b631-d881ab53b5ad",
          jinja=("Pick the most correct option to answer the following question.\n"
                 "\n"
                 "{{question}}\n"
                 "\n"
                 "Options:\n"
                 "{% for letter, t in zip(answer_choices, choices.text) %}\n"
                 "- {{letter}}: {{t}}\n"
                 "{% endfor %} |||\n"
                 "{{answerKey}}"),
          answer_choices="{{choices.label | join(\"|||\")}}"),
        T(name="qa_options", id="252aa566-9482-4e81-aad9-664a9bebd8e8",
          jinja=("{{question}}\n"
                 "\n"
                 "Options:\n"
                 "- {{answer_choices | join(\"\\n- \")}}|||\n"
                 "{{answer_choices[choices[\"label\"].index(answerKey)]}}"),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="i_am_hesitating", id="4fb13ac1-f770-45ea-b5d5-91ac50b0d609",
          jinja=("I am hesitating between 4 options to answer the following question, which option "
                 "should I choose?\n"
                 "Question: {{question}}\n"
                 "Possibilities:\n"
                 "- {{answer_choices | join(\"\\n- \")}}|||\n"
                 "{{answer_choices[choices[\"label\"].index(answerKey)]}}"),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="multiple_choice", id="8c689423-880d-402b-8c7d-a1a98c7589e8",
          jinja=("I gave my students this multiple choice question: {{question}}\n"
                 "\n"
                 "Only one answer is correct among these 4 choices:\n"
                 "- {{answer_choices | join(\"\\n- \")}}\n"
                 "\n"
                 "Could you tell me which one is correct?|||\n"
                 "{{answer_choices[choices[\"label\"].index(answerKey)]}}"),
          answer_choices="{{choices.text | join(\"|||\")}}"),
        T(name="heres_a_problem", id="d90da519-0e2c-4f9b-a546-7cba82824eb2",
          jinja=("Here's a problem to solve: {{question}}\n"
                 "\n"
                 "Among the 4 following options, which is the correct answer?\n"
                 "{% for letter, t in zip(answer_choices, choices.text) %}\n"
                 "- {{letter}}: {{t}}\n"
                 " {% endfor %}|||{{answerKey}}"),
          answer_choices="{{choices.label | join(\"|||\")}}"),
    ),
    "copa": (
        T(name="exercise", id="0edd8660-f299-4819-a5ac-633c11177228",
          jinja=("Exercise: choose the most plausible alternative.\n"
                 "\n"
                 "{{ premise }} {% if question == \"cause\" %} because... {% else %} so... {% endif %}\n"
                 "- {{choice1}}\n"
                 "- {{choice2}} ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="…What could happen next, C1 or C2?", id="150789fe-e309-47a1-82c9-0a4dc2c6b12b",
          jinja=("{% if question == \"effect\" %} \n"
                 "{{ premise }} What could happen next, \"{{ answer_choices[0] }}\" or \"{{ "
                 "answer_choices[1] }}\"? ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}\n"
                 "{% endif %}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="i_am_hesitating", id="4d879cbe-2fd7-424a-9d78-3f5200313fba",
          jinja=("{{ premise }} \n"
                 "\n"
                 "I am hesitating between two options. Help me choose the more likely {% if question "
                 "== \"cause\" %} cause: {% else %} effect: {% endif %}\n"
                 "- {{choice1}}\n"
                 "- {{choice2}} ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="plausible_alternatives", id="66ea075e-4d03-4a78-b1fa-9a5228cf0c9d",
          jinja=("{{ premise }} {% if question == \"cause\" %} This happened because... {% else %} As a "
                 "consequence... {% endif %}\n"
                 "Help me pick the more plausible option:\n"
                 "- {{choice1}}\n"
                 "- {{choice2}} ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="C1 or C2? premise, so/because…", id="744047dc-1298-45a2-8d68-d67e3f834ded",
          jinja=("\"{{ answer_choices[0] }}\" or \"{{ answer_choices[1] }}\"? {{ premise }} {% if "
                 "question == \"cause\" %} because {% else %} so {% endif %} ||| {% if label != -1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="{{choice1 }} ||| {{choice2}}"),
        T(name="…As a result, C1 or C2?", id="84da62c2-9440-4cfc-bdd4-d70c65e33a82",
          jinja=("{% if question == \"effect\" %} \n"
                 "{{ premise }} As a result, \"{{ answer_choices[0] }}\" or \"{{ answer_choices[1] }}\"? "
                 "||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}\n"
                 "{% endif %}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="best_option", id="8ce80f8a-239e-4393-892c-f63dbb0d9929",
          jinja=("{{ premise }} \n"
                 "\n"
                 "What's the best option?\n"
                 "- {{choice1}}\n"
                 "- {{choice2}}\n"
                 "\n"
                 "We are looking for {% if question == \"cause\" %} a cause {% else %} an effect {% "
                 "endif %}\n"
                 "||| {% if label != -1 %}{{answer_choices[label]}}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="…which may be caused by", id="8cf2ba73-aee5-4651-b5d4-b1b88afe4abb",
          jinja=("{% if question == \"cause\" %} \n"
                 "{{ premise }} Which may be caused by \"{{ answer_choices[0] }}\" or \"{{ "
                 "answer_choices[1] }}\"? ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}\n"
                 "{% endif %}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="more likely", id="a1f9951e-2b6b-4530-9636-9cdf4c1658c5",
          jinja=("Pick the more likely continuation to the following sentence:\n"
                 "{{ premise }} {% if question == \"cause\" %} as a result of: {% else %} as a "
                 "consequence: {% endif %}\n"
                 "- {{choice1}}\n"
                 "- {{choice2}} ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="cause_effect", id="a61d8c21-da25-47bf-b5fe-14a8edd650af",
          jinja=("{{ premise }}\n"
                 "\n"
                 "Select the most plausible {% if question == \"cause\" %} cause: {% else %} effect: {% "
                 "endif %}\n"
                 "- {{choice1}}\n"
                 "- {{choice2}} ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="…why? C1 or C2", id="a8bf11c3-bea2-45ba-a533-957d8bee5e2e",
          jinja=("{% if question == \"cause\" %} \n"
                 "{{ premise }} Why? \"{{ answer_choices[0] }}\" or \"{{ answer_choices[1] }}\"? ||| {% "
                 "if label != -1 %}{{ answer_choices[label] }}{%endif%}\n"
                 "{% endif %}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
        T(name="choose", id="f32348cd-d3cb-4619-87b9-e24f99c78567",
          jinja=("{{ premise }} {% if question == \"cause\" %} because... {% else %} so... {% endif %}\n"
                 "Choose between:\n"
                 "- {{choice1}}\n"
                 "- {{choice2}} ||| {% if label != -1 %}{{ answer_choices[label] }}{%endif%}"),
          answer_choices="{{choice1}} ||| {{choice2}}"),
    ),
    "hellaswag": (
        T(name="Randomized prompts template", id="52fbd075-46cb-49fb-a41b-00a0f4a60285",
          jinja=("{% set prompts = [\n"
                 "'Can you pick the correct ending for the sentence: ',\n"
                 "'The task is to generate the ending for the sentence: ',\n"
                 "'How does this sentence end? ',\n"
                 "'From the list of endings described below, what ending makes the most sense for the "
                 "sentence ',]\n"
                 "%}\n"
                 "{{prompts | choice}}\n"
                 "{{ctx}}\n"
                 "\n"
                 "(a)  {{answer_choices[0]}}\n"
                 "\n"
                 "(b)  {{answer_choices[1]}}\n"
                 "\n"
                 "(c)  {{answer_choices[2]}}\n"
                 "\n"
                 "(d)  {{answer_choices[3]}}\n"
                 "|||\n"
                 "{{answer_choices [label | int()]}}"),
          answer_choices="{{endings | join(\" ||| \") }}"),
        T(name="Predict ending with hint", id="6e9f8d7d-9016-45bc-b997-c42aeb2dc944",
          jinja=("How does this sentence end?\n"
                 "{{ctx}}\n"
                 "\n"
                 "(a)  {{answer_choices[0]}}\n"
                 "\n"
                 "(b)  {{answer_choices[1]}}\n"
                 "\n"
                 "(c)  {{answer_choices[2]}}\n"
                 "\n"
                 "(d)  {{answer_choices[3]}}\n"
                 "\n"
                 "Hint: the topic of the sentence is {{activity_label}}\n"
                 "|||\n"
                 "{{answer_choices [label | int()]}}"),
          answer_choices="{{endings | join(\"|||\")}}"),
        T(name="if_begins_how_continues", id="def77598-682f-48de-b187-55db4d390f07",
          jinja=("If a description of a situation begins like this: {{ ctx }}... Then how\n"
                 "does it continue? \n"
                 "\n"
                 "Ending 1: {{ endings[0] }}\n"
                 "\n"
                 "Ending 2: {{ endings[1] }}\n"
                 "\n"
                 "Ending 3: {{ endings[2] }}\n"
                 "\n"
                 "Ending 4: {{ endings[3] }}\n"
                 "|||{{answer_choices[label | int()] }}"),
          answer_choices="Ending 1 ||| Ending 2 ||| Ending 3 ||| Ending 4"),
    ),
    "rte": (
        T(name="MNLI crowdsource", id="2b52a83c-0021-41fe-b44c-5aaa076d71a2",
          jinja=("{{premise}} Using only the above description and what you know about the world, is "
                 "\"{{hypothesis}}\" definitely correct? Yes or no? ||| {% if label != -1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="guaranteed true", id="2d0d63da-ffcf-4f6e-941a-b8da922be43e",
          jinja=("Given {{premise}} Is it guaranteed true that \"{{hypothesis}}\"? Yes or no? ||| {% if "
                 "label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="can we infer", id="4163e6f1-1a83-4c73-b867-02eb7ac80316",
          jinja=("Suppose {{premise}} Can we infer that \"{{hypothesis}}\"? Yes or no? ||| {% if label "
                 "!= -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="GPT-3 style", id="8fb1c6aa-20e9-438c-bece-c6af1c746449",
          jinja=("{{premise}}\n"
                 "Question: {{hypothesis}} True or False? ||| {% if label != -1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="True ||| False"),
        T(name="does this imply", id="9e078fb4-505b-413c-bb5e-3cd16ddcf5d7",
          jinja=("{{premise}} \n"
                 "\n"
                 "Question: Does this imply that \"{{hypothesis}}\"? Yes or no? ||| {% if label != -1 "
                 "%}{{answer_choices[label]}}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="should assume", id="b8dc85c6-28b6-4340-979a-8e77c2a0dde8",
          jinja=("Given {{premise}} Should we assume that \"{{hypothesis}}\" is true? Yes or no? ||| {% "
                 "if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="does it follow that", id="e2fb58f2-b1f2-4aef-b74b-c4ee1c571fff",
          jinja=("Given that {{premise}} Does it follow that {{hypothesis}} Yes or no? ||| {% if "
                 "label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="based on the previous passage", id="ed1f4b75-8826-4852-9bd6-aedf368678f5",
          jinja=("{{premise}} Based on the previous passage, is it true that \"{{hypothesis}}\"? Yes or "
                 "no? ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="justified in saying", id="ee0ce095-122a-4509-bf0b-33d1495295f7",
          jinja=("{{premise}} Are we justified in saying that \"{{hypothesis}}\"? Yes or no? ||| {% if "
                 "label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
        T(name="must be true", id="fb4f8144-37f5-4977-88da-37a5d0bfd0e8",
          jinja=("Given that {{premise}} Therefore, it must be true that \"{{hypothesis}}\"? Yes or no? "
                 "||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No"),
    ),
    "cb": (
        T(name="can we infer", id="2e76cd0f-68ca-4f03-83ed-11cf15b25a84",
          jinja=("Suppose {{premise}} Can we infer that \"{{hypothesis}}\"? Yes, no, or maybe? ||| {% "
                 "if label !=-1 %}{{ answer_choices[label] }}{% endif %} "),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="based on the previous passage", id="358860fd-61ad-45fd-92a6-a72ca9107ebc",
          jinja=("{{premise}} Based on the previous passage, is it true that \"{{hypothesis}}\"? Yes, "
                 "no, or maybe? ||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="claim true/false/inconclusive", id="3f43a599-ffdb-490e-8952-c0ce41dd4621",
          jinja=("{{premise}} Based on that information, is the claim: \"{{hypothesis}}\" {{\"true\"}}, "
                 "{{\"false\"}}, or {{\"inconclusive\"}}? ||| {% if label !=-1 %}{{ answer_choices[label] "
                 "}}{% endif %}"),
          answer_choices="True ||| False ||| Inconclusive"),
        T(name="does it follow that", id="404eed25-558a-4d39-9515-7de46d60d4e0",
          jinja=("Given that {{premise}} Does it follow that {{hypothesis}} Yes, no, or maybe? ||| {% "
                 "if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="justified in saying", id="5c9b1fa9-93f0-4f82-b9e3-e0967e4d7260",
          jinja=("{{premise}} Are we justified in saying that \"{{hypothesis}}\"? Yes, no, or maybe? "
                 "||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="always/sometimes/never", id="6b0c6191-183d-4731-8050-ab17c909335c",
          jinja=("Suppose it's true that {{premise}} Then, is \"{{hypothesis}}\" {{\"always\"}}, "
                 "{{\"sometimes\"}}, or {{\"never\"}} true? ||| {% if label !=-1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="Always ||| Never ||| Sometimes"),
        T(name="GPT-3 style", id="75db2bc2-3caa-4956-9653-13c7dd6255df",
          jinja=("{{premise}}\n"
                 "Question: {{hypothesis}} True, False, or Neither? ||| {% if label !=-1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="True ||| False ||| Neither"),
        T(name="consider always/sometimes/never", id="87237a07-7cce-470a-80ac-3e5e3a5283ba",
          jinja=("{{premise}} \n"
                 "\n"
                 "Keeping in mind the above text, consider: {{hypothesis}} Is this {{\"always\"}}, "
                 "{{\"sometimes\"}}, or {{\"never\"}} correct? ||| {% if label !=-1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="Always ||| Never ||| Sometimes"),
        T(name="guaranteed true", id="8798b8a4-1f59-4c72-9c1b-3e3044a7462a",
          jinja=("Given {{premise}} Is it guaranteed true that \"{{hypothesis}}\"? Yes, no, or maybe? "
                 "||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="must be true", id="8e3b8d3d-1362-47dc-922a-82c03f965989",
          jinja=("Given that {{premise}} Therefore, it must be true that \"{{hypothesis}}\"? Yes, no, "
                 "or maybe? ||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="guaranteed/possible/impossible", id="90ab1002-093c-4e54-b48f-626655e36b65",
          jinja=("Assume it is true that {{premise}} \n"
                 "\n"
                 "Therefore, \"{{hypothesis}}\" is {{\"guaranteed\"}}, {{\"possible\"}}, or "
                 "{{\"impossible\"}}? ||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Guaranteed ||| Impossible ||| Possible"),
        T(name="does this imply", id="a485d120-6eef-4ff6-8684-42df1639b101",
          jinja=("{{premise}} \n"
                 "\n"
                 "Question: Does this imply that \"{{hypothesis}}\"? Yes, no, or maybe? ||| {% if label "
                 "!=-1 %}{{answer_choices[label]}}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="MNLI crowdsource", id="bee62bfa-5307-4e1c-97b2-2ad2f7bcb179",
          jinja=("{{premise}} Using only the above description and what you know about the world, "
                 "\"{{hypothesis}}\" is definitely correct, incorrect, or inconclusive? ||| {% if label "
                 "!=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Correct ||| Incorrect ||| Inconclusive"),
        T(name="should assume", id="e503b148-8e6c-43b5-9ed6-312794c54d9b",
          jinja=("Given {{premise}} Should we assume that \"{{hypothesis}}\" is true? Yes, no, or "
                 "maybe? ||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="Yes ||| No ||| Maybe"),
        T(name="take the following as truth", id="ea56b7f3-6e07-45bc-b619-c527eac4a41b",
          jinja=("Take the following as truth: {{premise}}\n"
                 "Then the following statement: \"{{hypothesis}}\" is {{\"true\"}}, {{\"false\"}}, or "
                 "{{\"inconclusive\"}}? ||| {% if label !=-1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="True ||| False ||| Inconclusive"),
    ),
    "anli": (
        T(name="MNLI crowdsource", id="0cc3ae39-3997-4686-8c93-5d51457efa1f",
          jinja=("{{premise}} Using only the above description and what you know about the world, "
                 "\"{{hypothesis}}\" is definitely correct, incorrect, or inconclusive? ||| {{ "
                 "answer_choices[label] }}"),
          answer_choices="Correct ||| Inconclusive ||| Incorrect"),
        T(name="should assume", id="179eb863-3ece-4e6f-af0f-fcb46d997306",
          jinja=("Given {{premise}} Should we assume that \"{{hypothesis}}\" is true? Yes, no, or "
                 "maybe? ||| {{ answer_choices[label] }} "),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="does it follow that", id="5459237b-97de-4340-bf7b-2939c3f7ca19",
          jinja=("Given that {{premise}} Does it follow that {{hypothesis}} Yes, no, or maybe? ||| {{ "
                 "answer_choices[label] }}"),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="GPT-3 style", id="620aa3fc-d5eb-46f5-a1ee-4c754527aa97",
          jinja=("{{premise}}\n"
                 "Question: {{hypothesis}} True, False, or Neither? ||| {{ answer_choices[label] }}"),
          answer_choices="True ||| Neither ||| False"),
        T(name="based on the previous passage", id="9b613182-c6ab-4427-9221-3d68f6d62765",
          jinja=("{{premise}} Based on the previous passage, is it true that \"{{hypothesis}}\"? Yes, "
                 "no, or maybe? ||| {{ answer_choices[label] }}"),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="justified in saying", id="a850110d-f1a3-49b4-949a-d3bfe9f81344",
          jinja=("{{premise}} Are we justified in saying that \"{{hypothesis}}\"? Yes, no, or maybe? "
                 "||| {{ answer_choices[label] }} "),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="take the following as truth", id="bab86d5a-4f9c-40db-b619-a7b7d5cae681",
          jinja=("Take the following as truth: {{premise}}\n"
                 "Then the following statement: \"{{hypothesis}}\" is {{\"true\"}}, {{\"false\"}}, or "
                 "{{\"inconclusive\"}}? ||| {{ answer_choices[label] }}"),
          answer_choices="True ||| Inconclusive ||| False"),
        T(name="must be true", id="bcd90047-3a2b-426b-b065-8a418f1317b8",
          jinja=("Given that {{premise}} Therefore, it must be true that \"{{hypothesis}}\"? Yes, no, "
                 "or maybe? ||| {{ answer_choices[label] }} "),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="can we infer", id="c4ed37ae-d7d7-4197-a725-ef2152fa3b1f",
          jinja=("Suppose {{premise}} Can we infer that \"{{hypothesis}}\"? Yes, no, or maybe? ||| {{ "
                 "answer_choices[label] }} "),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="guaranteed/possible/impossible", id="ca24b93a-6265-462f-b140-e329c03d94fa",
          jinja=("Assume it is true that {{premise}} \n"
                 "\n"
                 "Therefore, \"{{hypothesis}}\" is {{\"guaranteed\"}}, {{\"possible\"}}, or "
                 "{{\"impossible\"}}? ||| {{ answer_choices[label] }}"),
          answer_choices="Guaranteed ||| Possible ||| Impossible"),
        T(name="always/sometimes/never", id="dbc68425-5c42-43ae-9748-70ce8c5a167e",
          jinja=("Suppose it's true that {{premise}} Then, is \"{{hypothesis}}\" {{\"always\"}}, "
                 "{{\"sometimes\"}}, or {{\"never\"}} true? ||| {{ answer_choices[label] }}"),
          answer_choices="Always ||| Sometimes ||| Never"),
        T(name="does this imply", id="e5b7fdd7-fdff-4630-889b-3c7a052e5da0",
          jinja=("{{premise}} \n"
                 "\n"
                 "Question: Does this imply that \"{{hypothesis}}\"? Yes, no, or maybe? ||| "
                 "{{answer_choices[label]}}"),
          answer_choices="Yes ||| Maybe ||| No"),
        T(name="consider always/sometimes/never", id="e6f32b9c-7e0b-474a-a0d2-e84d20c22aba",
          jinja=("{{premise}} \n"
                 "\n"
                 "Keeping in mind the above text, consider: {{hypothesis}} Is this {{\"always\"}}, "
                 "{{\"sometimes\"}}, or {{\"never\"}} correct? ||| {{ answer_choices[label] }}"),
          answer_choices="Always ||| Sometimes ||| Never"),
        T(name="claim true/false/inconclusive", id="ec249357-e672-4e7d-b8b6-d97ed7d090c5",
          jinja=("{{premise}} Based on that information, is the claim: \"{{hypothesis}}\" {{\"true\"}}, "
                 "{{\"false\"}}, or {{\"inconclusive\"}}? ||| {{ answer_choices[label] }}"),
          answer_choices="True ||| Inconclusive ||| False"),
        T(name="guaranteed true", id="ffa0a6f0-7186-4ccb-bb35-8b1affb747a0",
          jinja=("Given {{premise}} Is it guaranteed true that \"{{hypothesis}}\"? Yes, no, or maybe? "
                 "||| {{ answer_choices[label] }} "),
          answer_choices="Yes ||| Maybe ||| No"),
    ),
    "wsc": (
        T(name="does the pronoun refer to", id="212fb8b1-8436-4f64-8f37-a9094fe029f4",
          jinja=("{{ text }} In the previous sentence, does the pronoun \"{{ span2_text.lower() }}\" "
                 "refer to {{ span1_text }}? Yes or no? ||| {% if label != -1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="by p they mean", id="23361c5d-b67f-4c2a-9da7-16301c55d0e1",
          jinja=("{{ text }} Here, by \"{{ span2_text }}\" they mean \"{{ span1_text }}\". Yes or no? ||| "
                 "{% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="in other words", id="2f17f18b-6daa-44ef-a2dd-dddaf04aec0e",
          jinja=("{{ text }} \n"
                 "\n"
                 "In other words, {{ text.split(\" \")[span2_index:] | join(\" \") | replace(span2_text, "
                 "span1_text) }} True or false? ||| {% if label != -1 %}{{ answer_choices[label] }}{% "
                 "endif %}"),
          answer_choices="False ||| True"),
        T(name="I think they mean", id="4b3e29cc-ccb8-4e4c-a845-4935ca29cf34",
          jinja=("{{ text }} I think they mean \"{{ text.split(\" \")[span2_index:] | join(\" \") | "
                 "replace(span2_text, span1_text) }}\" Yes or no? ||| {% if label != -1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="does p stand for", id="7482d24f-cf45-4013-b82d-369489fc958b",
          jinja=("{{ text }} Here, does \"{{ span2_text.lower() }}\" stand for {{ span1_text }}? Yes or "
                 "no? ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="GPT-3 Style", id="7d377293-d043-4b6c-8ec1-d61eaf14ec67",
          jinja=("Passage: {{ text }} \n"
                 "\n"
                 "Question: In the passage above, does the pronoun \"{{ span2_text }}\" refer to {{ "
                 "span1_text }}?\n"
                 "\n"
                 "Answer: ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="replaced with", id="809eacd0-2f6c-4e3a-b52a-57c783879d36",
          jinja=("{{ text }} In the previous sentence, can the pronoun \"{{ span2_text }}\" be replaced "
                 "with \"{{ span1_text }}\"? Yes or no? ||| {% if label != -1 %}{{ "
                 "answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="p is/are r", id="87f97aa0-1fa9-4f0b-b8e6-89d3c1f19bd6",
          jinja=("Context: {{ text }} \n"
                 "\n"
                 "{% if span2_text.lower()  == \"they\" or span2_text.lower() == \"them\" %}\n"
                 "Question: \"{{ span2_text }}\" are {{ span1_text }}. True or false?\n"
                 "{% else %}\n"
                 "Question: \"{{ span2_text }}\" is {{ span1_text }}. True or false?\n"
                 "{% endif %}\n"
                 "\n"
                 "Answer: ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="False ||| True"),
        T(name="the pronoun refers to", id="aae24b54-c3a7-4f69-8b77-f6dc115988f8",
          jinja=("{{ text }} \n"
                 "In the passage above, the pronoun \"{{ span2_text }}\" refers to {{ span1_text }}. "
                 "True or false? ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="False ||| True"),
        T(name="Who or what is/are", id="d88f3e21-42dc-49a5-924d-69b764a14816",
          jinja=("{{ text }} \n"
                 "{% if span2_text.lower()  == \"they\" or span2_text.lower() == \"them\" %}\n"
                 "Question: Who or what are \"{{ span2_text.lower() }}\"? {{ span1_text }}?\n"
                 "{% else %}\n"
                 "Question: Who or what is \"{{ span2_text.lower() }}\"? Is it {{ span1_text }}?\n"
                 "{% endif %}\n"
                 "Answer: ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}"),
          answer_choices="No ||| Yes"),
    ),
    "winogrande": (
        T(name="does underscore refer to", id="0f23f058-5b4d-42a3-92d4-5d60688aa90c",
          jinja=("{{ sentence }} In the previous sentence, does _ refer to {{ option1 }} or  {{ "
                 "option2 }}? ||| {% if answer == '1' %} {{option1}} {% else %} {{ option2 }} {% "
                 "endif %}"),
          answer_choices="{{ option1 }} ||| {{ option2 }}"),
        T(name="stand for", id="5080f912-fac8-400f-983c-944baf9b10c0",
          jinja=("In the sentence below, does the _ stand for {{answer_choices[0]}} or "
                 "{{answer_choices[1]}}?\n"
                 "{{sentence}}|||\n"
                 "{{answer_choices[answer | int - 1]}}"),
          answer_choices="{{option1}} ||| {{option2}}"),
        T(name="underscore refer to", id="5af00ba1-86e0-421b-bb97-26bf58df52d3",
          jinja=("{{sentence}}\n"
                 "What does the _ in the above sentence refer to? {{ option1 }} or {{ option2 }}? ||| "
                 "{% if answer == '1' %} {{option1}} {% else %} {{ option2 }} {% endif %}"),
          answer_choices="{{option1}} ||| {{option2}}"),
        T(name="fill in the blank", id="ac4e5cb4-f874-460a-8578-ddf1c6541bb4",
          jinja=("Fill in the _ in the below sentence:\n"
                 "{{sentence}}\n"
                 "\n"
                 "Choices:\n"
                 "- {{ option1 }}\n"
                 "- {{ option2 }}\n"
                 "\n"
                 "Answer: ||| {% if answer == '1' %} {{option1}} {% else %} {{ option2 }} {% endif %}"),
          answer_choices="{{option1}} ||| {{option2}}"),
        T(name="Replace", id="e7e42e9e-bc57-46ed-ad8a-76a5b90a5bb9",
          jinja=("{{sentence}}\n"
                 "Replace the _ in the above sentence with the correct option: \n"
                 "- {{option1}}\n"
                 "- {{option2}}\n"
                 "|||\n"
                 "{% if answer == '1' %} {{option1}} {% else %} {{ option2 }} {% endif %}"),
          answer_choices="{{option1}} ||| {{option2}}"),
    ),
    "wic": (
        T(name="question-context-meaning-with-label", id="14e73f39-a0d1-44c2-b9a4-4e48f9f1608e",
          jinja=("Does the word \"{{word}}\" have the same meaning in these two sentences? Yes, No?\n"
                 "{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="question-context-meaning", id="3503ead5-4fa5-4f77-95dc-f0c2ed3eecdc",
          jinja=("Does the word \"{{word}}\" have the same meaning in these two sentences?\n"
                 "{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="grammar_homework", id="611d13dc-d414-4b9b-9204-e4f325e859e7",
          jinja=("Homework\n"
                 "\n"
                 "Decide whether the word \"{{word}}\" is used with the same meaning in the two "
                 "following sentences. Answer by yes or no.\n"
                 "{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="affirmation_true_or_false", id="725b5ed0-7728-4890-95a4-a74cb7ae1bb4",
          jinja=("Sentence A: {{sentence1}}\n"
                 "Sentence B: {{sentence2}}\n"
                 "\n"
                 "\"{{word}}\" has a similar meaning in sentences A and B. True or False?\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="False ||| True"),
        T(name="GPT-3-prompt", id="c3a0a5d8-cfe9-4a7f-8a3c-3c526e0ad0c6",
          jinja=("{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "Question: Is the word '{{word}}' used in the same sense in the two sentences above?\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="same_sense", id="ce8b5a93-1841-4897-84db-b100f1c84f4b",
          jinja=("Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "\n"
                 "Determine whether the word \"{{word}}\" is used in the same sense in both sentences. "
                 "Yes or no?\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="question-context", id="cfbc1637-10b8-4f20-a31c-55292f3cebd0",
          jinja=("Determine if the word '{{word}}' is used in the same way in the two sentences "
                 "below. \n"
                 "{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="GPT-3-prompt-with-label", id="d9e1db2a-ab0b-4621-bb41-01d5788d3873",
          jinja=("{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "Question: Is the word '{{word}}' used in the same sense in the two sentences above? "
                 "Yes, No?\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="polysemous", id="dd2080cf-3117-49ba-9aff-c988a21fdb69",
          jinja=("The word \"{{word}}\" has multiple meanings. Does it have the same meaning in "
                 "sentences 1 and 2? Yes or no?\n"
                 "\n"
                 "Sentence 1: {{sentence1}}\n"
                 "Sentence 2: {{sentence2}}\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
        T(name="similar-sense", id="f934a96d-fe4d-4075-aa47-5595b9a604c7",
          jinja=("{{sentence1}}\n"
                 "{{sentence2}}\n"
                 "Similar sense of {{word}}?\n"
                 "||| {% if label != -1%}\n"
                 "{{answer_choices[label]}}\n"
                 "{% endif %}"),
          answer_choices="No ||| Yes"),
    ),
    "story_cloze": (
        T(name="Answer Given options", id="1a4946f9-a0e2-4fbb-aee8-b26ead2cf6b8",
          jinja=("{{context}} What is a possible continuation for the story given the following "
                 "options ? - {{answer_choices | join(\"\\n- \")}} ||| "
                 "{{answer_choices[answer_right_ending -1]}}"),
          answer_choices="{{sentence_quiz1}} ||| {{sentence_quiz2}}"),
        T(name="Choose Story Ending", id="1a9d53bc-eb77-4e7c-af6e-3d15b79d6cf1",
          jinja=("Read the following story :\n"
                 "\n"
                 "{{context}}\n"
                 "\n"
                 "Choose a possible ending for the previous story from the following options: \n"
                 "- {{answer_choices | join(\"\\n- \")}}\n"
                 "|||\n"
                 "\n"
                 "{{answer_choices[answer_right_ending -1]}}"),
          answer_choices="{{sentence_quiz1}} ||| {{sentence_quiz2}}",
          note="the four sentences joined by spaces (TFDS `context`), not newlines"),
        T(name="Movie What Happens Next", id="9dab69d1-cad0-4d2f-a7cc-120df233571c",
          jinja=("Yesterday, I watched a movie. Here's what happened: {{context}} What happens next? "
                 "- {{answer_choices | join(\"\\n- \")}} ||| {{answer_choices[answer_right_ending -1]}}"),
          answer_choices="{{sentence_quiz1}} ||| {{sentence_quiz2}}"),
        T(name="Story Continuation and Options", id="b5c8445f-2d3a-4691-bdd5-58956816702f",
          jinja=("What is a possible continuation for the following story ? \n"
                 "\n"
                 "{{context}}\n"
                 "\n"
                 "Choose from the following options:\n"
                 "- {{answer_choices | join(\"\\n- \")}}\n"
                 "|||\n"
                 "\n"
                 "{{answer_choices[answer_right_ending -1]}}"),
          answer_choices="{{sentence_quiz1}} ||| {{sentence_quiz2}}",
          note="the four sentences joined by spaces (TFDS `context`), not newlines"),
        T(name="Novel Correct Ending", id="c6f3d802-4f97-449f-a911-03470d418f7d",
          jinja=("I read the following novel: {{context}} What do you think is the most probable "
                 "ending? You can choose from the following options: - {{answer_choices | join(\"\\n- "
                 "\")}} ||| {{answer_choices[answer_right_ending -1]}}"),
          answer_choices="{{sentence_quiz1}} ||| {{sentence_quiz2}}"),
    ),
}
