"""archlab.data.bible: each diatheke quirk on a snippet of its real output (copied from
`diatheke -b MODULE -f plain -o f -k ...`), the pysword reader's rendering on snippets of the modules'
real OSIS markup, then the installed SWORD modules end to end, both readers verse for verse."""
from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest

from archlab.data import bible
from archlab.data.bible import (
    BOOKS,
    TEST_BOOKS,
    VALID_BOOKS,
    BibleError,
    Verse,
    align,
    corpus_text,
    osis_plain,
    parse_plain,
    prepare_bible,
    read_module,
    split_by_book,
)

from conftest import require_command, require_data

WEB, KJV, SPA = "engWEB2015eb", "engKJV2006eb", "spaRV1909eb"


def texts(verses: list[Verse]) -> dict[str, str]:
    return {v.ref: v.text for v in verses}


# ---------------------------------------------------------------------------------------------
# quirks, on real snippets

def test_poetry_continuation_lines_join_their_verse():
    out = (
        "I Samuel 2:7: Yahweh makes poor and makes rich.\n"
        "He brings low, he also lifts up. \n"
        "\n"
        "I Samuel 2:8: He raises up the poor out of the dust.\n"
        "He lifts up the needy from the dunghill\n"
        " to make them sit with princes \n"
        "and inherit the throne of glory.\n"
        "For the pillars of the earth are Yahweh’s.\n"
        "He has set the world on them. \n"
        "\n"
        "I Samuel 2:9: He will keep the feet of his holy ones,\n"
    )
    got = texts(parse_plain(out))
    assert got == {
        "1 Samuel 2:7": "Yahweh makes poor and makes rich. He brings low, he also lifts up.",
        "1 Samuel 2:8": "He raises up the poor out of the dust. He lifts up the needy from the dunghill "
                        "to make them sit with princes and inherit the throne of glory. "
                        "For the pillars of the earth are Yahweh’s. He has set the world on them.",
        "1 Samuel 2:9": "He will keep the feet of his holy ones,",
    }


def test_repeated_psalm_title_is_not_verse_text():
    out = (
        "Psalms 2:12: Give sincere homage to the Son, [2:12 or, Kiss the son]  lest he be angry, and you perish on the way,\n"
        "for his wrath will soon be kindled.\n"
        "Blessed are all those who take refuge in him. \n"
        "\n"
        "\n"
        "A Psalm by David, when he fled from Absalom his son.\n"
        "  Psalms 3:1: Yahweh, how my adversaries have increased!\n"
        "Many are those who rise up against me. \n"
        "\n"
        "A Psalm by David, when he fled from Absalom his son.\n"
        "  Psalms 3:2: Many there are who say of my soul,\n"
        "“There is no help for him in God.” [3:2 The Hebrew word rendered “God” is “אֱלֹהִ֑ים” (Elohim).] \n"
        "Selah.\n"
        "\n"
        "A Psalm by David, when he fled from Absalom his son.\n"
        "  Psalms 3:3: But you, Yahweh, are a shield around me,\n"
        "my glory, and the one who lifts up my head. \n"
    )
    got = texts(parse_plain(out))
    assert got == {
        "Psalms 2:12": "Give sincere homage to the Son, lest he be angry, and you perish on the way, "
                       "for his wrath will soon be kindled. Blessed are all those who take refuge in him.",
        "Psalms 3:1": "Yahweh, how my adversaries have increased! Many are those who rise up against me.",
        "Psalms 3:2": "Many there are who say of my soul, “There is no help for him in God.” Selah.",
        "Psalms 3:3": "But you, Yahweh, are a shield around me, my glory, and the one who lifts up my head.",
    }


def test_footnotes_are_cut_without_gluing_words():
    out = (
        "Genesis 1:1: In the beginning, God [1:1 The Hebrew word rendered “God” is “אֱלֹהִ֑ים” (Elohim).] created the heavens and the earth.\n"
        # a note right before punctuation
        "  Luke 21:8: He said, “Watch out that you don’t get led astray, for many will come in my name, saying, ‘I am he [21:8 or, I AM] ,’ and, ‘The time is at hand.’ Therefore don’t follow them.\n"
        # a note holding brackets of its own
        "  Matthew 27:35: When they had crucified him, they divided his clothing among them, casting lots, [27:35 TR adds “that it might be fulfilled which was spoken by the prophet: ‘They divided my garments among them, and for my clothing they cast lots;’” [see Psalm 22:18 and John 19:24]] \n"
    )
    got = texts(parse_plain(out))
    assert got["Genesis 1:1"] == "In the beginning, God created the heavens and the earth."
    assert "saying, ‘I am he,’ and, ‘The time" in got["Luke 21:8"]
    assert got["Matthew 27:35"] == ("When they had crucified him, they divided his clothing among them, "
                                    "casting lots,")


def test_kjv_notes_go_but_its_own_brackets_stay():
    out = (
        "Genesis 1:4: And God saw the light, that it was good: and God divided the light from the darkness. [1.4 the light from…: Heb. between the light and between the darkness] \n"
        "David’s Psalm of praise.\n"
        "   I John 2:23: Whosoever denieth the Son, the same hath not the Father: [but] he that acknowledgeth the Son hath the Father also.\n"
        "\n"
        "(engKJV2006eb)\n"
    )
    got = texts(parse_plain(out))
    assert got == {
        "Genesis 1:4": "And God saw the light, that it was good: and God divided the light from the darkness.",
        "1 John 2:23": "Whosoever denieth the Son, the same hath not the Father: [but] he that "
                       "acknowledgeth the Son hath the Father also.",
    }


def test_strongs_tags_are_stripped():
    out = (
        "Matthew 1:1: LIBRO de la generación de Jesucristo <G5547>, hijo de David, hijo de Abraham.\n"
        "II Samuel 11:1: Y ACONTECIÓ á la vuelta de un año, en el tiempo que salen los reyes <H4397>á la guerra\n"
        "Luke 22:67: Diciendo: ¿Eres tú el Cristo? dínos <G2254>lo. Y les dijo: Si os lo dijere, no creeréis;\n"
    )
    got = texts(parse_plain(out))
    assert got["Matthew 1:1"] == "LIBRO de la generación de Jesucristo, hijo de David, hijo de Abraham."
    assert got["2 Samuel 11:1"].endswith("salen los reyes á la guerra")
    assert got["Luke 22:67"].startswith("Diciendo: ¿Eres tú el Cristo? dínoslo. Y les")


def test_cross_references_are_cut_without_gluing_words():
    # -o fs: plain output would print "hear,the dead" (the cross-reference deleted with no space)
    out = ("Matthew 11:5: the blind receive their sight, the lame walk, the lepers are cleansed, the deaf hear, "
           "[11:5 Isaiah 35:5] the dead are raised up, and the poor have good news preached to them. [11:5 Isaiah 61:1-4] \n")
    assert texts(parse_plain(out))["Matthew 11:5"].endswith("the deaf hear, the dead are raised up, and the poor "
                                                             "have good news preached to them.")


# ---------------------------------------------------------------------------------------------
# the pysword reader: OSIS markup rendered as diatheke renders it (snippets of the modules' real markup)

def test_osis_notes_titles_and_preverse_matter_go():
    web_gen_1_1 = ('<w lemma="strong:H0430">In</w> <w lemma="strong:H0853">the</w> <w lemma="strong:H7225">beginning</w>, '
                   '<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">1:1 </reference>The '
                   'Hebrew word rendered “God” is “אֱלֹהִ֑ים” (Elohim).</note><w lemma="strong:H1254">created</w> '
                   '<w lemma="strong:H0853">the</w> <w lemma="strong:H8064">heavens</w> <w lemma="strong:H0430">and</w> '
                   '<w lemma="strong:H0853">the</w> <w lemma="strong:H0776">earth</w>. ')
    assert osis_plain(web_gen_1_1) == "In the beginning, God created the heavens and the earth."
    web_ps_3_1 = ('<div type="x-milestone" subType="x-preverse" sID="pv4877"/><title canonical="true" type="psalm">A Psalm '
                  'by David, when he fled from Absalom his son.</title> <lg sID="gen7860"/> <l level="1" sID="gen7861"/><div '
                  'type="x-milestone" subType="x-preverse" eID="pv4877"/>Yahweh, how <w lemma="strong:H1732">my</w> '
                  'adversaries <w lemma="strong:H1121">have</w> increased!<l eID="gen7861" level="1"/> <l level="2" '
                  'sID="gen7862"/>Many <w lemma="strong:H1121">are</w> <w lemma="strong:H1121">those</w> <w lemma="strong:H1121">who'
                  '</w> rise <w lemma="strong:H1121">up</w> <w lemma="strong:H6440">against</w> <w lemma="strong:H6440">me</w>. '
                  '<l eID="gen7862" level="2"/>')
    assert osis_plain(web_ps_3_1) == "Yahweh, how my adversaries have increased! Many are those who rise up against me."
    web_mt_11_5 = ('<w lemma="strong:G2974">deaf</w> <w lemma="strong:G0191">hear</w>,</q><note type="crossReference"><reference '
                   'subType="x-origin" type="annotateRef">11:5 </reference><reference>Isaiah 35:5</reference></note><q marker="" '
                   'who="Jesus"><w lemma="strong:G2532">the</w> <w lemma="strong:G3498">dead</w>')
    assert osis_plain(web_mt_11_5) == "deaf hear, the dead"
    # WEB's glossary follows Revelation 22:21 inside the verse, after the book's end
    web_rev_22_21 = ('<w lemma="strong:G3956">all</w> <w lemma="strong:G3956">the</w> saints. Amen.  <chapter eID="Rev.22"/><div '
                     'eID="gen35836" type="x-p"/> <div canonical="true" eID="gen35575" osisID="Rev" type="book"/> <div '
                     'sID="gen35837" type="glossary"/> <title level="1" type="main">World English Bible Glossary</title> The '
                     'following words used in the World English Bible (WEB) are not very common')
    assert osis_plain(web_rev_22_21) == "all the saints. Amen."


def test_osis_speakers_divine_names_and_strongs_as_diatheke_prints_them():
    # a speaker before the verse goes with the pre-verse matter; one inside it is printed as text
    song_1_4 = ('<l level="1" sID="gen15624"/>The king has brought me into his rooms.<l eID="gen15624" level="1"/> <lg '
                'eID="gen15620"/> <speaker>Friends</speaker> <lg sID="gen15626"/> <l level="1" sID="gen15627"/>We <w '
                'lemma="strong:H4428">will</w> <w lemma="strong:H4428">be</w> glad')
    assert osis_plain(song_1_4) == "The king has brought me into his rooms. Friends We will be glad"
    # "Lord" as plain text in a divine name is printed in capitals; around a <w> it is printed as it is
    kjv_num_23_15 = ('while I <w lemma="strong:H7136">meet</w> <transChange type="added">the <seg type="x-nested"><divineName>'
                     'Lord</divineName></seg></transChange> <w lemma="strong:H3541">yonder</w>. ')
    assert osis_plain(kjv_num_23_15) == "while I meet the LORD yonder."
    kjv_ex_9_29 = 'is</transChange> the <divineName><w lemma="strong:H3068">LORD’s</w></divineName>. '
    assert osis_plain(kjv_ex_9_29) == "is the LORD’s."
    # a word's second Strong's number is printed after it, and clean_text's rule for those applies: "dínoslo"
    spa_lk_22_67 = ('<w lemma="strong:G5547">Cristo</w>? <w lemma="strong:G2036 G2254">dínos</w><transChange '
                    'type="added">lo</transChange>. <w lemma="strong:G1161">Y</w>')
    assert osis_plain(spa_lk_22_67) == "Cristo? dínoslo. Y"
    spa_2sa_11_1 = ('<w lemma="strong:H3318">que salen</w> <w lemma="strong:H4428 H4397">los reyes</w><transChange '
                    'type="added">á la guerra</transChange>, <w lemma="strong:H1732">que David</w>')
    assert osis_plain(spa_2sa_11_1) == "que salen los reyes á la guerra, que David"
    assert osis_plain("Tom &amp; Jerry <w>x</w>") == "Tom & Jerry x"


def test_pysword_keys():
    assert bible._parse_key("Genesis-Revelation") == (list(BOOKS), None, None)
    assert bible._parse_key("Ruth-1 Samuel") == (["Ruth", "1 Samuel"], None, None)
    assert bible._parse_key("I Samuel 3") == (["1 Samuel"], 3, None)
    assert bible._parse_key("Psalm 23:1") == (["Psalms"], 23, 1)
    with pytest.raises(BibleError, match="'Hezekiah 1'"):
        bible._parse_key("Hezekiah 1")


def test_the_reader_can_be_chosen(monkeypatch):
    monkeypatch.setenv("ARCHLAB_BIBLE_READER", "pysword")
    assert bible.bible_reader() == "pysword"
    monkeypatch.setenv("ARCHLAB_BIBLE_READER", "sword")
    with pytest.raises(BibleError, match="ARCHLAB_BIBLE_READER='sword'"):
        bible.bible_reader()


def test_deuterocanon_dropped_and_book_names_normalised():
    out = (
        "A praise psalm by David. [] \n"
        "  Malachi 4:6: He will turn the hearts of the fathers to the children and the hearts of the children to their fathers, lest I come and strike the earth with a curse.”   \n"
        "A praise psalm by David. [] \n"
        "  Tobit 1:1: The book of the words of Tobit, the son of Tobiel, the son of Ananiel, the son of Aduel, the son of Gabael, of the seed of Asiel, of the tribe of Naphtali;\n"
        "A praise psalm by David. [1:2 That is, Shalmaneser. Compare 2 Kings 17:3, 23. ] \n"
        "  Tobit 1:2: who in the days of Enemessar [1:2 That is, Shalmaneser. Compare 2 Kings 17:3, 23. ]  king of the Assyrians was carried away captive out of Thisbe,\n"
        "  IV Maccabees 18:24: To him be glory forever and ever. Amen.  \n"
        "This Psalm is a genuine one of David, though extra, [1:1 Messiah (Hebrew) and Christ (Greek) both mean “Anointed One”]  composed when he fought in single combat with Goliath.\n"
        "  Matthew 1:1: The book of the genealogy of Jesus Christ, [1:1 Messiah (Hebrew) and Christ (Greek) both mean “Anointed One”] the son of David, the son of Abraham. \n"
        "This Psalm is a genuine one of David, though extra, []  composed when he fought in single combat with Goliath.\n"
        "  III John 1:14: but I hope to see you soon. Then we will speak face to face.  Peace be to you. The friends greet you. Greet the friends by name.   \n"
        "  Revelation of John 22:21: The grace of the Lord Jesus Christ be with all the saints. Amen.     \n"
    )
    got = parse_plain(out)
    assert [v.ref for v in got] == ["Malachi 4:6", "Matthew 1:1", "3 John 1:14", "Revelation 22:21"]
    assert got[1].text == "The book of the genealogy of Jesus Christ, the son of David, the son of Abraham."
    assert bible.canonical_book("I Samuel") == "1 Samuel"
    assert bible.canonical_book("Song of Solomon") == "Song of Solomon"
    assert bible.canonical_book("Esther (Greek)") is None


def test_empty_verses_are_kept_empty_and_counted_by_align():
    # WEB moves Romans 16:25-27 to 14:24-26: 16:25 is only a note, 16:26-27 come behind raw markup
    out = (
        "This Psalm is a genuine one of David, though extra, []  composed when he fought in single combat with Goliath.\n"
        "  Romans 16:24: The grace of our Lord Jesus Christ be with you all! Amen.\n"
        "This Psalm is a genuine one of David, though extra, [16:25 TR places Romans 14:24-26 at the end of Romans instead of at the end of chapter 14, and numbers these verses 16:25-27.]  composed when he fought in single combat with Goliath.\n"
        "  Romans 16:25:  [16:25 TR places Romans 14:24-26 at the end of Romans instead of at the end of chapter 14, and numbers these verses 16:25-27.]    \n"
        '<title canonical="true" type="psalm">This Psalm is a genuine one of David, though extra,<note placement="foot" swordFootnote="1"></note> composed when he fought in single combat with Goliath.</title> <lg sID="gen13538"/> <l level="1" sID="gen13539"/>Romans 16:26: \n'
        '<title canonical="true" type="psalm">This Psalm is a genuine one of David, though extra,<note placement="foot" swordFootnote="1"></note> composed when he fought in single combat with Goliath.</title> <lg sID="gen13538"/> <l level="1" sID="gen13539"/>Romans 16:27: \n'
        "This Psalm is a genuine one of David, though extra, [1:1 “Christ” means “Anointed One”.]  composed when he fought in single combat with Goliath.\n"
        "  I Corinthians 1:1: Paul, called to be an apostle of Jesus Christ [1:1 “Christ” means “Anointed One”.] through the will of God, and our brother Sosthenes,\n"
    )
    web = parse_plain(out)
    assert texts(web) == {
        "Romans 16:24": "The grace of our Lord Jesus Christ be with you all! Amen.",
        "Romans 16:25": "", "Romans 16:26": "", "Romans 16:27": "",
        "1 Corinthians 1:1": "Paul, called to be an apostle of Jesus Christ through the will of God, "
                             "and our brother Sosthenes,",
    }
    other = [Verse("Romans", 16, v, f"v{v}") for v in (24, 25, 26, 27)] + [Verse("Romans", 16, 28, "")]
    pairs, stats = align(other, web)
    assert [s.ref for s, _ in pairs] == ["Romans 16:24"]
    assert stats == {"pairs": 1, "dropped_empty": {"src": 1, "tgt": 3},
                     "dropped_unmatched": {"src": 3, "tgt": 1}}


def test_glossary_and_module_name_are_not_verse_text():
    out = (
        "This Psalm is a genuine one of David, though extra, []  composed when he fought in single combat with Goliath.\n"
        "  Revelation of John 22:20: He who testifies these things says, “Yes, I am coming soon.”  Amen! Yes, come, Lord Jesus! \n"
        "This Psalm is a genuine one of David, though extra, []  composed when he fought in single combat with Goliath.\n"
        "  Revelation of John 22:21: The grace of the Lord Jesus Christ be with all the saints. Amen.     \n"
        "\n\n\n"
        "   The following words used in the World English Bible (WEB) are not very common, either because they refer to ancient weights, measures, or money, or because they are in some way unique to the Bible.  Abaddon Abaddon is Hebrew for destruction.\n"
        "(engWEB2015eb)\n"
    )
    assert texts(parse_plain(out)) == {
        "Revelation 22:20": "He who testifies these things says, “Yes, I am coming soon.” Amen! Yes, come, Lord Jesus!",
        "Revelation 22:21": "The grace of the Lord Jesus Christ be with all the saints. Amen.",
    }


def test_books_and_held_out_sets():
    assert len(BOOKS) == 66 == len(set(BOOKS))
    assert set(VALID_BOOKS) <= set(BOOKS) and set(TEST_BOOKS) <= set(BOOKS)
    assert not set(VALID_BOOKS) & set(TEST_BOOKS)
    for held in (VALID_BOOKS, TEST_BOOKS):   # both testaments in each
        assert min(BOOKS.index(b) for b in held) < BOOKS.index("Matthew") <= max(BOOKS.index(b) for b in held)


def test_split_by_book_keeps_whole_books():
    pairs = [(Verse(b, 1, 1, "s"), Verse(b, 1, 1, "t")) for b in BOOKS]
    splits = split_by_book(pairs)
    assert {p[0].book for p in splits["valid"]} == set(VALID_BOOKS)
    assert {p[0].book for p in splits["test"]} == set(TEST_BOOKS)
    assert sum(map(len, splits.values())) == 66


def test_prepare_bible_files_without_diatheke(tmp_path, monkeypatch):
    fake = {"src": [Verse("Ruth", 1, 1, "uno\tdos"), Verse("Genesis", 1, 1, "a\nb"), Verse("Genesis", 1, 2, "")],
            "tgt": [Verse("Genesis", 1, 1, "A"), Verse("Ruth", 1, 1, "one")]}
    monkeypatch.setattr(bible, "read_module", lambda module, books="": fake[module])
    stats = prepare_bible("src", "tgt", tmp_path / "out")
    assert (tmp_path / "out/train.tsv").read_text() == "a b\tA\n"
    assert (tmp_path / "out/train.ref").read_text() == "Genesis 1:1\n"
    assert (tmp_path / "out/test.tsv").read_text() == "uno dos\tone\n"
    assert (tmp_path / "out/valid.tsv").read_text() == ""
    assert stats["splits"] == {"train": 1, "valid": 0, "test": 1}
    assert stats["dropped_empty"] == {"src": 1, "tgt": 0}
    assert json.loads((tmp_path / "out/stats.json").read_text()) == stats
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    prepare_bible("src", "tgt", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == first


def test_corpus_text_is_cached_until_a_sword_file_changes(tmp_path, monkeypatch):
    sword = tmp_path / "sword"
    (sword / "mods.d").mkdir(parents=True)
    conf = sword / "mods.d" / "fake.conf"
    conf.write_text("[Fake]\n")
    monkeypatch.setattr(bible, "sword_paths", lambda: [sword])
    monkeypatch.setattr(bible, "bible_reader", lambda: "pysword")
    monkeypatch.setenv("ARCHLAB_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_read(module, books="Genesis-Revelation", reader=None):
        calls.append(module)
        return [Verse("John", 1, 2, "second"), Verse("Genesis", 1, 1, f"first {len(calls)}"), Verse("John", 1, 3, "")]

    monkeypatch.setattr(bible, "read_module", fake_read)
    assert corpus_text("Fake") == "first 1\nsecond\n" and len(calls) == 1
    assert corpus_text("Fake") == "first 1\nsecond\n" and len(calls) == 1  # from the cache
    conf.write_text("[Fake]\nVersion=2\n")  # the module changed: read again
    assert corpus_text("Fake") == "first 2\nsecond\n" and len(calls) == 2
    assert len(list((tmp_path / "cache" / "bible").glob("Fake-*.txt"))) == 1  # the stale text is gone
    monkeypatch.setenv("ARCHLAB_CACHE", "off")
    assert corpus_text("Fake") == "first 3\nsecond\n" and len(calls) == 3


def test_missing_readers_say_what_to_install(monkeypatch):
    monkeypatch.setattr(bible.shutil, "which", lambda cmd: None)
    monkeypatch.setitem(sys.modules, "pysword", None)  # neither diatheke nor pysword
    with pytest.raises(BibleError, match=r"apt-get install diatheke sword-text-web.*pip install pysword"):
        read_module(WEB, "Jonah 1:1")


# ---------------------------------------------------------------------------------------------
# real data: the installed SWORD modules

@pytest.fixture(scope="module")
def web() -> list[Verse]:
    require_command("diatheke", "diatheke")
    return read_module(WEB)


@pytest.fixture(scope="module")
def spa() -> list[Verse]:
    require_command("diatheke", "diatheke")
    return read_module(SPA)


@pytest.fixture(scope="module")
def kjv() -> list[Verse]:
    require_command("diatheke", "diatheke")
    return read_module(KJV)


def test_real_unknown_module_is_named_with_the_installed_ones():
    require_command("diatheke", "diatheke")
    with pytest.raises(BibleError, match=r"'engNOPE'.*installed: .*engWEB2015eb"):
        read_module("engNOPE")


def test_real_web_text(web):
    got = texts(web)
    assert {v.book for v in web} == set(BOOKS)
    assert [b for b in dict.fromkeys(v.book for v in web)] == list(BOOKS)   # canonical order
    assert got["Genesis 1:1"] == "In the beginning, God created the heavens and the earth."
    assert got["Psalms 3:3"].startswith("But you, Yahweh")
    assert got["Revelation 22:21"] == "The grace of the Lord Jesus Christ be with all the saints. Amen."
    # psalm titles: no Psalms verse opens with one, and the last title never leaks anywhere
    titles = re.compile(r"^(A Psalm|A Song|By David|For the Chief Musician|A prayer|A praise psalm)")
    assert not [r for r, t in got.items() if r.startswith("Psalms") and titles.match(t)]
    assert not [r for r, t in got.items() if "genuine one of David" in t or "glossary" in t]
    assert not [r for r, t in got.items() if "[" in t or "<" in t or "\n" in t]
    # the footnotes used to glue ~219 word pairs ("Godcreated", "YahwehGod", "knewEve")
    glued = re.compile(r"\b(?:God|Yahweh)[a-z]{2,}\b")
    real = {"Godly", "Godward", "Godhead"}
    assert [w for t in got.values() for w in glued.findall(t) if w not in real] == []
    assert "Yahweh God made the earth" in got["Genesis 2:4"]


def test_real_spanish_is_clean(spa):
    got = texts(spa)
    assert not [r for r, t in got.items() if re.search(r"<[GH]\d+>|[\[\]<>]", t)]
    assert got["Genesis 1:1"] == "EN el principio crió Dios los cielos y la tierra."
    assert got["Matthew 1:1"] == "LIBRO de la generación de Jesucristo, hijo de David, hijo de Abraham."


def test_real_spanish_english_pairs_and_split(spa, web):
    pairs, stats = align(spa, web)
    print("spa-web", stats)
    assert 30_900 <= stats["pairs"] <= 31_102
    assert stats["dropped_empty"]["src"] < 40 and stats["dropped_empty"]["tgt"] < 20
    splits = split_by_book(pairs)
    books = {name: {s.book for s, _ in part} for name, part in splits.items()}
    assert not books["train"] & books["valid"] and not books["train"] & books["test"]
    assert not books["valid"] & books["test"]
    assert books["valid"] == set(VALID_BOOKS) and books["test"] == set(TEST_BOOKS)
    assert 1_000 <= len(splits["valid"]) <= 1_500 and 1_000 <= len(splits["test"]) <= 1_500
    # held-out books must be free of the modules' versification drift (see align()), whose mark
    # is an empty verse on one side only
    empty = {(v.book, v.chapter, v.verse) for v in spa + web if not v.text}
    assert not [k for k in empty if k[0] in VALID_BOOKS + TEST_BOOKS]
    s, t = pairs[0]
    assert (s.ref, t.text) == ("Genesis 1:1", "In the beginning, God created the heavens and the earth.")


def test_real_kjv_web_pairs(kjv, web):
    got = texts(kjv)
    assert got["Genesis 1:1"] == "In the beginning God created the heaven and the earth."
    assert got["Genesis 1:6"].startswith("And God said")   # the ¶ paragraph mark is gone
    assert got["Psalms 3:3"].startswith("But thou, O LORD")
    assert not [r for r, t in got.items() if re.search(r"\[\s*\d+[.:]", t)]   # no footnote left
    pairs, stats = align(kjv, web)
    print("kjv-web", stats)
    assert 30_900 <= stats["pairs"] <= 31_102


def test_real_prepare_bible_on_a_few_books(tmp_path):
    require_command("diatheke", "diatheke")
    stats = prepare_bible(SPA, WEB, tmp_path, books="Ruth-1 Samuel")
    assert stats["splits"] == {"train": 759, "valid": 0, "test": 85}   # 1 Samuel, Ruth
    assert stats["dropped_empty"] == {"src": 1, "tgt": 0}   # RV1909 leaves 1 Samuel 23:29 empty
    # ... because its 24:1 is WEB's 23:29: both chapters go (50 pairs)
    assert stats["dropped_misnumbered"] == {"chapters": ["1 Samuel 23", "1 Samuel 24"], "pairs": 50}
    for name, n in stats["splits"].items():
        rows = (tmp_path / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
        refs = (tmp_path / f"{name}.ref").read_text(encoding="utf-8").splitlines()
        assert len(rows) == len(refs) == n
        assert all(row.count("\t") == 1 for row in rows)
    assert (tmp_path / "test.ref").read_text().startswith("Ruth 1:1\n")
    assert json.loads((tmp_path / "stats.json").read_text())["test_books"] == list(TEST_BOOKS)


def test_real_corpus_text(web):
    text = corpus_text(WEB)
    lines = text.splitlines()
    assert len(lines) == sum(bool(v.text) for v in web)
    assert lines[0] == "In the beginning, God created the heavens and the earth."
    assert text.endswith("with all the saints. Amen.\n")


# ---------------------------------------------------------------------------------------------
# real data: the pysword reader gives diatheke's verses

def require_pysword() -> None:
    require_data(importlib.util.find_spec("pysword") is not None, "pysword (pip install pysword; a dependency)")


@pytest.mark.parametrize("module", [WEB, SPA, KJV])
def test_real_pysword_equals_diatheke_on_every_verse(module, web, spa, kjv):
    require_pysword()
    got = read_module(module, reader="pysword")
    assert got == {WEB: web, SPA: spa, KJV: kjv}[module]  # all 66 books, every verse, character for character
    assert len(got) > 31_000


def test_real_pysword_keys_and_missing_diatheke(monkeypatch):
    require_command("diatheke", "diatheke")
    require_pysword()
    for key in ("John 1:1", "Ruth-1 Samuel", "Psalm 23", "Jonah 2", "Matthew-Revelation"):
        assert read_module(WEB, key, reader="pysword") == read_module(WEB, key, reader="diatheke"), key
    monkeypatch.setattr(bible.shutil, "which", lambda cmd: None)  # no diatheke: pysword reads
    assert bible.bible_reader() == "pysword"
    assert read_module(SPA, "Jonah 1:1")[0].text.startswith("Y FUÉ palabra de Jehová á Jonás")
    assert {WEB, SPA, KJV} <= set(bible.installed_modules())
    with pytest.raises(BibleError, match=r"'engNOPE' is not installed.*installed: .*engWEB2015eb"):
        read_module("engNOPE")
