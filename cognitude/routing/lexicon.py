"""Keyword groups of the classifier, in English, German, French, Spanish, Portuguese, Russian,
Hindi, Japanese and Chinese (one string per language, in that order).

Data only; ``signals.py`` compiles it once at import. Terms are ``|``-separated; ``{a,b}``
expands to alternatives (``analy{se,ze}``: analyse, analyze; ``{,s}``: optional suffix). A term
of several words is a phrase matched on word boundaries, and the words inside a matched phrase
do not count again on their own ("linked list" is code, not a "list" request). Terms containing
Chinese or Japanese characters match as substrings (those scripts have no spaces). Text is
lower-cased and punctuation (apostrophes and hyphens included) becomes a space before
matching, so write ``what s`` for "what's" and ``trade off`` for "trade-off".

Inflected languages get their common forms written out rather than stems: an exact-word
lookup is a set intersection (about 1 µs a prompt), where a stem regex over hundreds of
alternatives costs 20 µs or more.
"""

from __future__ import annotations

from .topics import CODE_STRONG, CODE_WEAK, DOMAIN, MATH, PROOF, THEORY, Group

# Closures and chit-chat: the whole turn is a greeting, thanks or an acknowledgement.
CHITCHAT: Group = (
    "hi|hello|hey|hiya|thanks|thank you|thank you so much|thanks a lot|thx|ty|cheers|ok|okay"
    "|cool|nice|great|awesome|perfect|brilliant|got it|bye|goodbye|good morning|good night"
    "|lol|haha|appreciate it|much appreciated|great job|well done|love it|sounds good"
    "|makes sense|super helpful|very helpful|how are you|how s it going|what s up",
    "hallo|danke|danke schön|dankeschön|vielen dank|super|toll|prima|tschüss|guten morgen"
    "|guten tag|guten abend|gute nacht|alles klar|passt|perfekt|wie geht s|wie geht es dir",
    "bonjour|salut|coucou|merci|merci beaucoup|génial|parfait|au revoir|bonsoir|bonne nuit"
    "|d accord|très bien|ça va|comment ça va|comment allez vous",
    "hola|gracias|muchas gracias|genial|perfecto|vale|adiós|adios|buenos días|buenos dias"
    "|buenas noches|buenas tardes|de acuerdo|cómo estás|como estas|qué tal",
    "olá|ola|oi|obrigad{o,a}|muito obrigad{o,a}|valeu|perfeito|ótimo|otimo|tchau|bom dia"
    "|boa noite|boa tarde|beleza|tudo bem|como vai",
    "привет|здравствуйте|спасибо|спасибо большое|отлично|супер|пока|до свидания|доброе утро"
    "|добрый день|спокойной ночи|понятно|хорошо|как дела",
    "नमस्ते|नमस्कार|धन्यवाद|शुक्रिया|बहुत बढ़िया|ठीक है|अलविदा|आप कैसे हैं",
    "こんにちは|こんばんは|おはよう|ありがとう|どうも|了解|よろしく|さようなら|お元気ですか",
    "你好|您好|谢谢|多谢|感谢|好的|早上好|晚安|再见|太棒了|明白了|收到|你好吗",
)

# Factual look-ups: one fact, one definition, one number.
LOOKUP: Group = (
    "what is|what s|what was|what were|what does|what do|who is|who s|who was|who were"
    "|when is|when was|when did|where is|where s|where are|where was|how many|how much"
    "|how old|how tall|how far|how long is|which is|which country|what year|what time"
    "|what day|capital of|define|definition of|meaning of|synonym{,s} for|antonym{,s}"
    "|population of|is it true|true or false",
    "was ist|was sind|was war|was bedeutet|wer ist|wer war|wann|wo ist|wo liegt|wie viele"
    "|wie viel|wie alt|wie hoch|welche{,r,s}|hauptstadt|bedeutet|bedeutung",
    "qu est ce que|qu est ce qu|c est quoi|qui est|où est|où se trouve|combien"
    "|quel est|quelle est|capitale|signifie|définition|que veut dire",
    "qué es|que es|quién es|quien es|quién fue|cuándo|dónde|donde está"
    "|cuánt{o,a,os,as}|cuál es|cual es|capital de|significa|definición|qué significa",
    "o que é|o que e|quem é|quem foi|onde fica|onde está|quant{o,a,os,as}|qual é|qual e"
    "|capital do|capital da|definição|o que significa",
    "что такое|что это|кто так{ой,ая}|кто был|где находится|сколько|как{ой,ая,ое}"
    "|столица|означает|определение",
    "क्या है|क्या होता|कौन है|कौन था|कब|कहाँ|कहां|कितन{े,ा,ी}|राजधानी|मतलब|अर्थ",
    "とは|何ですか|なんですか|いつですか|はいつ|どこですか|どこにあ|にありますか|いくつ|何人"
    "|何年|何県|何色|何語|何歳|何時|首都|どういう意味",
    "是什么|什么是|是谁|谁是|什么时候|哪里|在哪|多少|几个|哪个|哪一年|首都|什么意思",
)

# Looking up a name or a word, whatever the topic: who proved Fermat's Last Theorem, how
# do you pronounce "quantum", what is the theorem of Pythagoras called in German.
NAME_LOOKUP: Group = (
    "who wrote|who proved|who invented|who discovered|who painted|who composed|who founded"
    "|who directed|who said|who built|who won|how do you pronounce|pronounce|pronunciation"
    "|how do you spell|how do you say|how do you write|spell out|short for|stand for"
    "|stands for|abbreviation|acronym|called in|what s the word for|the word for|plural of"
    "|spelling of",
    "wer schrieb|wer hat geschrieben|wer erfand|wer entdeckte|wer bewies|wie spricht man"
    "|wie schreibt man|wie sagt man|abkürzung|wofür steht|auf englisch|auf deutsch",
    "qui a écrit|qui a démontré|qui a prouvé|qui a inventé|qui a découvert|comment prononce"
    "|comment dit on|comment écrit on|abréviation|en anglais|en français",
    "quién escribió|quién demostró|quién inventó|quién descubrió|cómo se pronuncia"
    "|cómo se dice|cómo se escribe|abreviatura|en inglés|en español",
    "quem escreveu|quem provou|quem inventou|quem descobriu|como se pronuncia|como se diz"
    "|como se escreve|abreviatura|em inglês|em português",
    "кто написал|кто доказал|кто изобрёл|кто изобрел|кто открыл|как произносится"
    "|как сказать|как пишется|аббревиатура|по английски",
    "किसने लिखा|किसने खोजा|किसने सिद्ध|उच्चारण|अंग्रेज़ी में|अंग्रेजी में",
    "誰が|英語で|日本語で|何と言|と言いますか|読み方|と読み|発音|略語|略称",
    "谁发明|谁写的|谁证明|谁发现|英语怎么说|怎么读|用英语|中文怎么说|读音|拼音|缩写",
)

# First words of a question that asks for a fact or a yes/no ("What port does Postgres use",
# "Is 21 a prime number?"), when no look-up phrase matched.
OPENERS = frozenset(
    "what which who whom whose where when whats is are does do did was were has have "
    "was wer wo wann welche welcher welches ist sind "
    "qu quel quelle quels quelles qui où quand combien est "
    "qué quién dónde cuándo cuál cuánto cuántos cuánta cuántas es son "
    "quem onde quando qual quais quanto quantos é "
    "что кто где когда какой какая какое сколько".split())

# Light transformations of given text: translate, list, rephrase, format, extract one item.
SIMPLE_TASK: Group = (
    "translate|translation|list|rephrase|paraphrase|reword|proofread|fix the grammar"
    "|fix grammar|fix typos|fix the typos|correct the grammar|spell check|convert"
    "|capitali{ze,se}|title case|uppercase|lowercase|alphabeti{ze,se}|sort|extract|classify"
    "|categori{ze,se}|name three|name five|name a|give me a synonym|reformat|rename|bold"
    "|italics|bullet list|bullet points|bullets|turn that into|put that|put this|count"
    "|positive or negative|sentiment|spell",
    "übersetze|übersetzen|übersetzung|liste|auflisten|nenne|korrigiere|korrigieren"
    "|umformulieren|formuliere um|rechtschreibung|grammatik|konvertiere|umwandeln|rechne um"
    "|extrahiere|extrahieren|sortiere|fett|stichpunkte",
    "traduis|traduire|traduction|traduisez|liste|énumère|corrige|corriger|reformule"
    "|reformuler|orthographe|grammaire|convertis|convertir|extrais|extraire|trie|gras",
    "traduce|traducir|traducción|traduzca|enumera|menciona|nombra|corrige|corregir"
    "|reformula|ortografía|gramática|convierte|convertir|extrae|extraer|ordena|negrita",
    "traduza|traduzir|tradução|liste|listar|enumere|corrija|corrigir|reformule|ortografia"
    "|converta|converter|extraia|extrair|ordene|negrito",
    "переведи|перевести|переведите|перевод|перечисли|назови|исправь|исправьте"
    "|перефразируй|конвертируй|преобразуй|извлеки|отсортируй",
    "अनुवाद|सूची",
    "翻訳|訳して|一覧|列挙|校正|変換して|抽出|並べ替え|太字",
    "翻译|列出|列举|润色|纠正|校对|转换成|提取|排序|加粗",
)

# Condensing a given text: a small model does a short one; a long paste makes it medium.
SUMMARISE: Group = (
    "summari{ze,se,zing,sing}|summary|tl dr|tldr|condense|recap|main points|key points"
    "|main point|gist",
    "fasse zusammen|zusammenfassen|zusammenfassung|fasse|hauptpunkte",
    "résume|résumer|résumez|résumé|synthèse|points clés",
    "resume|resumir|resumen|resuma|puntos clave",
    "resuma|resumir|resumo|pontos principais",
    "перескажи|резюмируй|резюме|кратко изложи|основные мысли",
    "सारांश",
    "要約|まとめて|要点",
    "总结|概括|摘要|要点|归纳",
)

# Requests for a one-line answer: a word, a sentence, yes or no.
ONE_LINE: Group = (
    "in one word|one word|in a word|one sentence|in one sentence|a sentence|yes or no"
    "|one line|one liner|tl dr|tldr|one or two sentences",
    "in einem wort|ein wort|ein satz|in einem satz|ja oder nein",
    "en un mot|un mot|en une phrase|une phrase|oui ou non",
    "en una palabra|una palabra|en una frase|sí o no|si o no",
    "em uma palavra|numa palavra|uma palavra|em uma frase|numa frase|sim ou não",
    "одним словом|одно слово|одним предложением|в одном предложении|да или нет",
    "एक शब्द में|एक वाक्य में|हाँ या नहीं",
    "一言で|一文で|はいかいいえ",
    "一句话|一个词|用一个词|是或否",
)

# Requests for a short answer.
BREVITY: Group = (
    "briefly|brief|short answer|quick answer|quick question|just the|in a few words"
    "|keep it short|concise|eli5|in short|short|quick|quickly|one paragraph|in a paragraph"
    "|a few sentences|{two,three,four,five} sentence{,s}|{two,three,four,five} line{,s}"
    "|like i m {5,five,10,12}|in simple terms|for a child|for kids",
    "kurz|kurze{,s,n,r}|kurze antwort|nur die antwort|nur den|nur das|knapp|zwei sätze"
    "|vier zeilen",
    "brièvement|bref|brève|réponse courte|juste la réponse|juste le|court|courte{,s}"
    "|deux phrases",
    "brevemente|breve|respuesta corta|solo la respuesta|solo el|corto|corta|dos frases",
    "brevemente|breve|resposta curta|só a resposta|curto|curta|duas frases",
    "кратко|коротко|вкратце|только ответ|коротк{ий,ое,ую}|кратк{ий,ое,ую}",
    "संक्षेप में|संक्षिप्त",
    "簡潔に|短く|手短に|三行|一行|短い",
    "简短|简要|简单回答|简单说|简述|简单地",
)

# Short creative forms: a haiku, a joke, a tweet, a slogan.
SHORT_FORM: Group = (
    "haiku|joke|jokes|tweet|slogan|tagline|caption|limerick|pun|riddle|rhyme|birthday message"
    "|toast|subject line{,s}|name for|names for|title for|titles for|emoji",
    "witz|slogan|spruch|reim|bildunterschrift|gedicht|namen für",
    "blague|slogan|haïku|légende|devinette|rime|nom pour",
    "chiste|eslogan|haiku|adivinanza|rima|lema|nombre para",
    "piada|slogan|haicai|legenda|adivinha|rima|nome para",
    "шутк{а,у}|анекдот|слоган|загадк{а,у}|хокку|подпись",
    "चुटकुला|नारा|पहेली",
    "俳句|ジョーク|冗談|スローガン|キャッチコピー|なぞなぞ|川柳",
    "笑话|口号|标语|谜语|俳句|广告语",
)

# Formal constraints on creative work: metre, rhyme scheme, fixed forms, lipograms.
FORM_CONSTRAINT: Group = (
    "sonnet|sestina|villanelle|pantoum|ghazal|acrostic|lipogram|iambic|pentameter|hexameter"
    "|rhyme scheme|end words|every paragraph|each paragraph|every line|each line|every sentence"
    "|without using the letter|without the letter|the letter|alphabetical order|palindrome"
    "|reverse chronological|strict",
    "sonett|akrostichon|lipogramm|jambus|reimschema|jede zeile|jeder absatz|genau",
    "sonnet|acrostiche|lipogramme|alexandrin|alexandrins|schéma de rimes|chaque vers"
    "|chaque ligne|exactement",
    "soneto|acróstico|lipograma|endecasílabo|endecasílabos|esquema de rima|cada verso"
    "|cada línea|exactamente",
    "soneto|acróstico|lipograma|decassílabo|esquema de rimas|cada verso|cada linha|exatamente",
    "сонет|акростих|липограмма|ямб|ямбом|схема рифм|каждая строка|ровно",
    "छंद|दोहा",
    "五七五|季語|押韻|韻を踏|各行|折句|回文",
    "七言|五言|绝句|律诗|平仄|格律|押韵|韵脚|藏头诗|对仗|每句|回文",
)

# Writing verbs: write, draft, compose (the noun decides how much writing).
COMPOSE: Group = (
    "write|draft|compose|create|generate|short story|story",
    "schreibe|schreib|verfasse|erstelle|geschichte",
    "écris|écrire|écrivez|rédige|rédiger|rédigez|crée|histoire",
    "escribe|escribir|escriba|redacta|redactar|crea|genera|cuento|historia",
    "escreva|escrever|escreve|redija|redigir|crie|gere|conto|história",
    "напиши|написать|напишите|составь|сочини|создай|рассказ",
    "लिखिए|लिखो|लिखें|लिखे|बनाइए|कहानी",
    "書いて|作成して|作って|書け|物語|小説を書",
    "写一|写个|写一篇|写一首|写一封|撰写|起草|编写|生成|故事",
)

# Practical how-to questions and advice.
HOWTO: Group = (
    "how to|how do i|how can i|what s the best way|best way to|help me|steps to|can you help"
    "|tips for|advice on|any ideas|ideas for|suggestions for|what should i",
    "wie kann ich|wie mache ich|wie soll ich|hilf mir|tipps|was soll ich",
    "comment faire|comment puis je|comment je|aide moi|aidez moi|conseils|que dois je",
    "cómo puedo|como puedo|cómo hago|como hago|ayúdame|ayudame|consejos|qué debo",
    "como posso|como faço|como fazer|me ajude|ajude me|dicas|o que devo",
    "как мне|как сделать|как можно|помоги|помогите|советы|что мне делать",
    "कैसे करें|कैसे करूँ|मदद",
    "方法|やり方|どうすれば|手伝って|コツ",
    "怎么做|如何做|怎样|怎么办|帮我|建议",
)

WHY: Group = (
    "why|how come",
    "warum|wieso|weshalb",
    "pourquoi",
    "por qué|por que",
    "por que|por quê",
    "почему|зачем",
    "क्यों",
    "なぜ|どうして|何故",
    "为什么|为何",
)

# Explanations: explain, describe, how does X work, the difference between.
EXPLAIN: Group = (
    "explain|explaining|explanation|describe|elaborate|how does|walk me through"
    "|help me understand|tell me about|overview of|difference between|differences between"
    "|teach me|introduction to|with an example|with examples|give examples|worked example",
    "erkläre|erklären|erklär|erklärung|beschreibe|beschreiben|wie funktioniert"
    "|wie funktionieren|unterschied|unterschiede|überblick|einführung|mit beispiel{,en}",
    "explique|expliquer|expliquez|explication|décris|décrire|décrivez|comment fonctionne"
    "|comment marche|différence entre|différences entre|différences|aperçu|avec des exemples"
    "|donne des exemples",
    "explica|explícame|explicar|explique|explicación|describe|describir|cómo funciona"
    "|como funciona|diferencia entre|diferencias entre|diferencias|introducción"
    "|con un ejemplo|con ejemplos",
    "explique|explicar|explica|explicação|descreva|descrever|como funciona|diferença entre"
    "|diferenças entre|diferenças|introdução|visão geral|com um exemplo|com exemplos",
    "объясни|объясните|объяснить|объяснение|опиши|описать|опишите|как работает|как работают"
    "|разница между|чем отличается|отличие|обзор|с примером|с примерами",
    "समझाइए|समझाओ|समझाएं|समझाएँ|व्याख्या|वर्णन|कैसे काम|अंतर|परिचय|उदाहरण",
    "説明|解説|仕組み|違い|どのように|紹介|例を挙げ|具体例",
    "解释|说明|讲解|介绍|原理|区别|如何工作|怎么工作|举例|举一个|例子",
)

# Reasoning verbs: analyse, compare, evaluate, weigh trade-offs, argue both sides.
ANALYSIS: Group = (
    "analy{se,ze,sing,zing,sis,ses}|compar{e,ing,ison}|contrast|evaluat{e,ing,ion}"
    "|assess{,ing,ment}|critique|critically|trade off{,s}|tradeoff{,s}|pros and cons"
    "|advantages and disadvantages|strengths and weaknesses|implications"
    "|investigate|root cause|versus|vs|what would happen|what happens if|what breaks"
    "|which is better|nuanced|steelman|for and against|argue|which is stronger|mechanism{,s}"
    "|scenario{,s}|hypothes{is,es}|infer|reasoning"
    "|counter arguments|assumptions|evidence|conflict|interact|risks",
    "analysiere|analysieren|analyse|vergleiche|vergleichen|vergleich|bewerte|bewerten"
    "|bewertung|beurteile|beurteilen|abwägen|abwägung|vor und nachteile|kritisch|untersuche"
    "|untersuchen|auswirkungen|für und gegen|szenarien|risiken|berücksichtige",
    "analyse|analyser|analysez|compare|comparer|comparez|comparaison|évalue|évaluer|évaluez"
    "|évaluation|critique|avantages et inconvénients|compromis|implications|examine"
    "|pour et contre|argumente|scénarios|risques|mécanismes",
    "analiza|analizar|analice|análisis|compara|comparar|compare|comparación|evalúa|evaluar"
    "|evalúe|evaluación|critica|ventajas y desventajas|pros y contras|implicaciones|examina"
    "|a favor y en contra|argumenta|razona|escenarios|riesgos|mecanismos",
    "analise|analisar|análise|compare|comparar|comparação|avalie|avaliar|avaliação|critique"
    "|prós e contras|vantagens e desvantagens|implicações|examine|a favor e contra"
    "|argumente|cenários|riscos|mecanismos",
    "проанализируй|проанализируйте|анализ|анализировать|сравни|сравните|сравнить|сравнение"
    "|оцени|оцените|оценить|критически|плюсы и минусы|преимущества и недостатки|компромиссы"
    "|последствия|за и против|сценарии|риски|механизмы",
    "विश्लेषण|तुलना|मूल्यांकन|फायदे और नुकसान|लाभ और हानि|आकलन|जोखिम",
    "分析|比較|評価|検討|長所と短所|メリットとデメリット|トレードオフ|考察|シナリオ|試算|示唆"
    "|リスク|影響を",
    "分析|比较|对比|评估|评价|优缺点|利弊|权衡|探讨|论证|风险|影响|情景",
)

# Building verbs: design, architect, optimise, plan.
DESIGN: Group = (
    "design|designing|architect|architecture|optimi{ze,se,zing,sing,zation,sation}|strategy"
    "|roadmap|propose|proposal|blueprint|plan|schedule|itinerary|curriculum|lesson plan",
    "entwirf|entwerfe|entwerfen|entwurf|konzipiere|konzipieren|architektur|optimiere"
    "|optimieren|optimierung|strategie|plan|plane|stundenplan",
    "conçois|concevoir|concevez|conception|architecture|optimise|optimiser|optimisez"
    "|optimisation|stratégie|propose|plan|planifie|itinéraire",
    "diseña|diseñar|diseñe|diseño|arquitectura|optimiza|optimizar|optimice|optimización"
    "|estrategia|propón|plan|planifica|itinerario",
    "projete|projetar|desenhe|arquitetura|otimize|otimizar|otimização|estratégia|proponha"
    "|plano|planeje|roteiro",
    "спроектируй|спроектируйте|спроектировать|проектирование|архитектур{а,у}|оптимизируй"
    "|оптимизировать|оптимизация|стратеги{я,ю}|предложи|план|расписание",
    "डिज़ाइन|डिजाइन|अनुकूलित|रणनीति|आर्किटेक्चर|योजना",
    "設計|アーキテクチャ|最適化|戦略|構築|提案|計画|プラン|スケジュール|旅程",
    "设计|架构|优化|策略|方案|构建|搭建|计划|规划|日程|行程",
)

# Debugging: a failure to diagnose.
DEBUG: Group = (
    "debug|debugging|bug|bugs|crash|crashes|crashing|segfault|exception|error|errors|fails"
    "|failing|doesn t work|not working|memory leak|leaks|race|race condition|deadlock|throws"
    "|null pointer|hangs|timeout|timeouts",
    "debuggen|fehler|fehlermeldung|absturz|stürzt ab|funktioniert nicht|bug",
    "déboguer|débogage|bug|erreur|plantage|plante|ne fonctionne pas|ne marche pas",
    "depurar|depuración|bug|error|falla|no funciona|excepción",
    "depurar|depuração|bug|erro|falha|não funciona|trava|exceção",
    "отладить|отладка|отладь|баг|ошибк{а,у,и}|падает|не работает|исключение|утечка памяти",
    "बग|त्रुटि|एरर|काम नहीं कर",
    "デバッグ|バグ|例外|クラッシュ|動かない",
    "调试|报错|异常|崩溃|不工作|内存泄漏|死锁",
)


# Output in a structure: a table, JSON, CSV, named fields.
STRUCTURED: Group = (
    "as a table|in a table|a table|table with|markdown table|json|as json|csv|columns"
    "|schema|spreadsheet",
    "tabelle|als json|spalten|felder",
    "tableau|en json|colonnes|champs",
    "tabla|en json|columnas|campos",
    "tabela|em json|colunas|campos",
    "таблиц{а,у,ы}|в формате json|столбцы|поля",
    "तालिका",
    "表形式|表で|json形式|json|一覧表",
    "表格|json格式|json",
)

# Checking given material: is the total right, are the figures consistent.
VERIFY: Group = (
    "check whether|check if|check that|verify|is this correct|is it correct|consistent"
    "|coherent|sanity check|add up|is this lawful|is it legal|is this legal|flag any",
    "prüfe ob|überprüfe|stimmt das|ist das korrekt|ist das rechtmäßig",
    "vérifie si|vérifier|vérifiez|est ce correct|cohérent{,s}",
    "comprueba si|comprueba|verifica|es correcto|coherentes|cuadran|cuadre",
    "verifique|confira|está correto|coerentes",
    "проверь|проверьте|правильно ли|сходится ли",
    "जाँच|जांच",
    "確認して|検証|正しいか|整合",
    "检查|核对|验证|是否正确|一致",
)


# Single calculations: compute, solve, simplify.
COMPUTE: Group = (
    "calculate|compute|solve|simplify|work out|find the value|evaluate the expression",
    "berechne|berechnen|löse|vereinfache",
    "calcule|calculer|calculez|résous|résoudre|simplifie",
    "calcula|calcular|resuelve|resolver|simplifica",
    "calcule|calcular|resolva|resolver|simplifique",
    "вычисли|вычислите|посчитай|рассчитай|реши|решите|упрости",
    "गणना|हल कीजिए|हल करें",
    "計算して|計算し|求めて|求めよ|解いて|簡単にして",
    "计算|求解|解方程|化简|求出",
)

# Follow-ups that trim the previous answer: a lighter edit than extending it.
FOLLOW_UP_TRIM: Group = (
    "shorter|shorten|simpler|simplify it|more concise|condense|trim|tighten|cut it|fewer words"
    "|less formal|more formal|bold|bullet list|bullet points",
    "kürzer|kürze|einfacher|prägnanter",
    "plus court|plus courte|raccourcis|plus simple|plus concis",
    "más corto|más corta|acorta|más simple|más conciso",
    "mais curto|mais curta|encurte|mais simples|mais conciso",
    "короче|сократи|проще|покороче",
    "छोटा करें|छोटा करो",
    "短く|簡潔に|簡単に",
    "更短|缩短|更简单|更简洁|精简",
)


# Requests for a long or thorough answer.
OUTPUT_LARGE: Group = (
    "detailed|in detail|in depth|comprehensive|thorough|thoroughly|exhaustive|extensive"
    "|essay|a report|the report|full report|white paper|whitepaper|research paper|thesis"
    "|dissertation|full implementation|complete implementation|production ready"
    "|production grade|long form|deep dive|business plan|technical specification|design doc"
    "|chapters|the details|full details|complete guide",
    "ausführlich{,e,en}|detailliert{,e,en}|umfassend{,e,en}|gründlich|essay|aufsatz|bericht"
    "|abhandlung|erörterung|hausarbeit",
    "détaillé{,e,s,es}|en détail|approfondi{,e}|exhaustif|exhaustive|dissertation|rapport",
    "detallad{o,a}|en detalle|a fondo|exhaustiv{o,a}|en profundidad|ensayo|reporte"
    "|tesis|monografía",
    "detalhad{o,a}|em detalhe{,s}|aprofundad{o,a}|exaustiv{o,a}|ensaio|redação|relatório"
    "|dissertação|tese|monografia",
    "подробно|подробн{ый,ое,ую,ее}|детально|детальн{ый,ое,ую}|развёрнут{ый,ое,ую}"
    "|развернут{ый,ое,ую}|исчерпывающ{ий,ее,ую}|всесторонн{ий,ее,ий}|эссе|доклад|отчёт|отчет"
    "|сочинение|реферат|диссертаци{я,ю}",
    "विस्तार से|विस्तृत|विस्तारपूर्वक|निबंध|रिपोर्ट",
    "詳しく|詳細|徹底的|網羅的|論文|レポート|小論文|エッセイ|報告書",
    "详细|详尽|深入|全面|论文|报告|作文|长文",
)

# Sequencing words of a multi-step instruction.
SEQUENCE: Group = (
    "and then|after that|afterwards|finally|firstly|secondly|lastly|step 1|step one"
    "|followed by|then",
    "und dann|danach|anschließend|zuerst|zunächst|schließlich|zuletzt|erstens|zweitens",
    "et ensuite|ensuite|puis|après cela|enfin|d abord|premièrement|deuxièmement|finalement",
    "y luego|luego|después|primero|finalmente|por último|a continuación",
    "e depois|depois|em seguida|primeiro|finalmente|por fim|por último",
    "а затем|затем|потом|после этого|сначала|во первых|во вторых|наконец",
    "उसके बाद|इसके बाद|अंत में",
    "その後|次に|まず|最後に|それから",
    "然后|接着|之后|首先|最后|其次",
)

# Constraints on the answer: must, at least, without using, edge cases.
CONSTRAINT: Group = (
    "must|must not|at least|at most|no more than|no less than|without using|ensure"
    "|make sure|requirement{,s}|constraint{,s}|edge case{,s}|handle|do not use|don t use"
    "|only use|exactly|should support|should handle|without",
    "muss|müssen|mindestens|höchstens|maximal|nicht mehr als|ohne|sicherstellen"
    "|stelle sicher|anforderung{,en}|randfälle",
    "doit|doivent|au moins|au plus|au maximum|pas plus de|sans utiliser|sans|assure toi"
    "|assurez vous|exigence{,s}|contrainte{,s}|cas limites|gérer",
    "debe|deben|al menos|como máximo|no más de|sin usar|sin|asegúrate|asegurate|requisito{,s}"
    "|restricci{ón,ones}|casos límite|manejar",
    "deve|devem|pelo menos|no máximo|não mais que|sem usar|sem|garanta|certifique se"
    "|requisito{,s}|restriç{ão,ões}|casos extremos",
    "должен|должна|должно|должны|не менее|не более|как минимум|максимум|без|убедись"
    "|требовани{е,я}|ограничени{е,я}|граничные случаи",
    "चाहिए|कम से कम|अधिकतम|बिना|सुनिश्चित|आवश्यकता|शर्त",
    "必ず|以内|使わずに|要件|制約|条件",
    "必须|至少|最多|不超过|不得|确保|要求|约束|限制|边界情况",
)

# A follow-up that edits or continues the previous task ("now make the proof shorter").
FOLLOW_UP: Group = (
    "now|also|instead|again|continue|go on|keep going|more|shorter|longer|simpler|rewrite"
    "|redo|make it|make the|make this|change|modify|update|extend|expand|add|remove"
    "|generali{ze,se}|improve|shorten|tweak|adjust|what about|what if|same for|do the same"
    "|and for|try again|one more|another|elaborate|fix it|yes|go ahead|do it|please do",
    "jetzt|nun|auch|stattdessen|nochmal|noch einmal|weiter|mach weiter|kürzer|länger"
    "|einfacher|schreibe um|umschreiben|ändere|ändern|erweitere|erweitern|füge hinzu"
    "|hinzufügen|entferne|verbessere|verbessern|verallgemeinere|was ist mit|und wenn"
    "|das gleiche|dasselbe|ja",
    "maintenant|aussi|également|plutôt|encore|continue|continuer|plus court|plus long"
    "|plus simple|réécris|réécrire|modifie|modifier|change|étends|ajoute|ajouter|supprime"
    "|améliore|améliorer|généralise|et si|pareil|la même chose|oui",
    "ahora|también|en su lugar|otra vez|de nuevo|continúa|continua|sigue|más corto"
    "|más largo|más simple|reescribe|reescribir|modifica|cambia|amplía|añade|agrega|elimina"
    "|quita|mejora|generaliza|y si|lo mismo|sí",
    "agora|também|em vez disso|de novo|novamente|continue|continua|mais curto|mais longo"
    "|mais simples|reescreva|reescrever|modifique|mude|altere|amplie|adicione|acrescente"
    "|remova|melhore|generalize|e se|o mesmo|sim",
    "теперь|также|тоже|вместо|снова|ещё раз|еще раз|продолжай|продолжи|продолжайте|короче"
    "|длиннее|проще|перепиши|переделай|измени|расширь|добавь|удали|убери|улучши|обобщи"
    "|а если|то же самое|да",
    "अब|भी|फिर से|जारी रखें|जारी रखो|छोटा करें|छोटा करो|बदलें|बदलो|जोड़ें|जोड़ो|हटाएँ"
    "|सुधारें|दोबारा",
    "続けて|続き|もっと|短く|長く|書き直し|修正して|変更して|追加して|削除して|改善して"
    "|一般化|同じように|今度は|さらに",
    "继续|再来|更短|更长|更简单|改写|重写|修改|改成|扩展|添加|加上|删除|去掉|改进|推广"
    "|同样|现在|那如果",
)

# Exhortations that ask for effort, not for a harder task: removed before any matching, so
# "think step by step" around a trivial ask cannot buy the top tier.
BAIT: Group = (
    "let s think step by step|think step by step|step by step|be careful|please be careful"
    "|be very careful|be extremely careful|be really careful|reason step by step"
    "|reason like an expert|like an expert|like a world class|world class|justify rigorously"
    "|reason about edge cases|consider every edge case|think about it deeply|with great care"
    "|pay close attention|this matters a lot|it is crucial|this is crucial|very carefully"
    "|be rigorous|be extremely rigorous|be very rigorous|extremely rigorous|well justified"
    "|no mistakes|with no mistakes|precise answer|chain of thought reasoning|show all your work"
    "|show all work|verify your answer|check your answer|list your assumptions"
    "|consider counterarguments|consider counter arguments|before answering"
    "|give a final answer|final answer"
    "|carefully|think carefully|think hard|think harder|think deeply|think it through"
    "|take a deep breath|this is very important|this is important|it s important"
    "|very important|extremely important|this is critical|my job depends on this"
    "|double check your answer|double check|make sure you re right|you are an expert"
    "|you re an expert|act as an expert|as an expert|reason carefully|show your reasoning"
    "|show your work|chain of thought|be accurate|be precise|be thorough"
    "|don t make mistakes|think before you answer|take your time|ultrathink",
    "denke schritt für schritt|denk schritt für schritt|schritt für schritt|sei vorsichtig"
    "|sorgfältig|das ist sehr wichtig|sehr wichtig|atme tief durch|denke gründlich nach",
    "réfléchis étape par étape|étape par étape|sois prudent|fais attention"
    "|c est très important|très important|respire profondément|réfléchis bien",
    "piensa paso a paso|paso a paso|ten cuidado|con cuidado|esto es muy importante"
    "|muy importante|respira hondo|piensa bien",
    "pense passo a passo|passo a passo|tenha cuidado|com cuidado|isso é muito importante"
    "|muito importante|respire fundo|pense bem",
    "думай шаг за шагом|подумай шаг за шагом|шаг за шагом|будь внимателен|внимательно"
    "|это очень важно|очень важно|сделай глубокий вдох|подумай хорошо",
    "चरण दर चरण|सावधान|बहुत महत्वपूर्ण|ध्यान से",
    "ステップバイステップ|段階的に考えて|一歩ずつ|慎重に|注意深く|とても重要|深呼吸",
    "一步一步|逐步思考|一步步|仔细|小心|非常重要|很重要|深呼吸",
)

GROUPS: dict[str, Group] = {
    "chitchat": CHITCHAT,
    "lookup": LOOKUP,
    "name_lookup": NAME_LOOKUP,
    "simple_task": SIMPLE_TASK,
    "summarise": SUMMARISE,
    "one_line": ONE_LINE,
    "brevity": BREVITY,
    "short_form": SHORT_FORM,
    "form_constraint": FORM_CONSTRAINT,
    "compose": COMPOSE,
    "howto": HOWTO,
    "why": WHY,
    "explain": EXPLAIN,
    "analysis": ANALYSIS,
    "design": DESIGN,
    "debug": DEBUG,
    "code_strong": CODE_STRONG,
    "code_weak": CODE_WEAK,
    "structured": STRUCTURED,
    "verify": VERIFY,
    "proof": PROOF,
    "theory": THEORY,
    "compute": COMPUTE,
    "math": MATH,
    "domain": DOMAIN,
    "output_large": OUTPUT_LARGE,
    "sequence": SEQUENCE,
    "constraint": CONSTRAINT,
    "follow_up": FOLLOW_UP,
    "follow_up_trim": FOLLOW_UP_TRIM,
}
