"""Topic vocabulary of the classifier: code, mathematics, formal reasoning and the domains
whose questions need depth (system design, security, law, medicine, finance, science), in
English, German, French, Spanish, Portuguese, Russian, Hindi, Japanese and Chinese.

Data only, in the format ``lexicon.py`` describes; ``lexicon.py`` holds the vocabulary of
requests (what is asked, how long, how hard) and the registry of groups. ``FALSE_FRIENDS``
lists the everyday phrases in which a topic word means nothing of the kind ("proof of
purchase", "an integral part", "prime minister").
"""

from __future__ import annotations

Group = tuple[str, ...]

# Programming words that mean code on their own.
CODE_STRONG: Group = (
    "implement|implementation|implementing|algorithm{,s}|regex|regexp|regular expression"
    "|unit test{,s}|pytest|api|apis|endpoint{,s}|compiler|codebase|dockerfile|docker"
    "|kubernetes|sql|javascript|typescript|golang|c++|cpp|c#|kotlin|haskell|php|bash"
    "|shell script|powershell|nodejs|react|django|flask|fastapi|numpy|pandas|pytorch"
    "|tensorflow|css|html|git|npm|async|recursion|recursive|linked list|binary tree|hashmap"
    "|hash map|programming|graphql|rest api|webhook|refactor|refactoring|one liner|goroutine"
    "|terraform|makefile|hooks",
    "implementiere|implementieren|implementierung|algorithmus|quellcode|programmieren",
    "implémente|implémenter|implémentation|algorithme|programmation",
    "implementa|implementar|implementación|algoritmo|programación",
    "implemente|implementar|implementação|algoritmo|programação",
    "реализуй|реализуйте|реализовать|реализацию|алгоритм|программирование",
    "एल्गोरिदम|प्रोग्रामिंग",
    "関数|実装|アルゴリズム|プログラミング|コード",
    "函数|代码|算法|编程",
)


# Programming words that are ordinary words too (the snake python, a dress code): two of
# them, or one with a writing verb, make a code request.
CODE_WEAK: Group = (
    "python|java|rust|ruby|swift|function|class|method|script|program|query|string|array"
    "|variable|library|module|code|database|loop|component|migration|schema|column|table"
    "|postgres|postgresql|mysql|sqlite|redis|nginx|yaml|cron",
    "funktion|programm|skript|klasse|methode|code|datenbank|abfrage",
    "fonction|programme|script|classe|méthode|code|base de données|requête",
    "función|programa|script|clase|método|código|base de datos|consulta",
    "função|programa|script|classe|método|código|banco de dados|consulta",
    "функци{я,ю,и}|программ{а,у}|скрипт|класс|метод|код|базы данных|запрос",
    "फ़ंक्शन|फंक्शन|प्रोग्राम|कोड",
    "プログラム|スクリプト|クラス|メソッド|データベース|クエリ|python",
    "程序|脚本|实现|数据库|查询|python",
)


# Formal reasoning: prove, derive, show that.
PROOF: Group = (
    "prove|proving|proof|proofs|prove that|show that|demonstrate that|derive|deriving"
    "|derivation|by induction|by contradiction|formal verification|disprove|counterexample"
    "|rigorous|rigorously|justify|p np|p vs np|riemann hypothesis|goldbach|collatz"
    "|twin prime{,s}|open problem|millennium prize",
    "beweise|beweisen|beweis|beweist|zeige dass|zeigen sie dass|herleiten|herleitung"
    "|widerlege|gegenbeispiel|begründe",
    "démontre|démontrer|démontrez|démonstration|prouve|prouver|prouvez|preuve|montre que"
    "|montrez que|déduis|contre exemple|par récurrence|par l absurde|justifie",
    "demuestra|demostrar|demuestre|demostración|prueba que|pruebe que|muestra que"
    "|muestre que|deducir|derivación|contraejemplo|por inducción|por contradicción|justifica",
    "provar|prove que|demonstre|demonstrar|demonstração|mostre que|deduza|deduzir|dedução"
    "|derivação|contraexemplo|por indução|por contradição|justifique",
    "докажи|докажите|доказать|доказательство|доказательства|покажи что|покажите что"
    "|выведи формулу|выведите формулу|вывести формулу|опровергни|контрпример|по индукции|обоснуй",
    "सिद्ध कीजिए|सिद्ध करें|सिद्ध करो|साबित करें|साबित करो|साबित कीजिए|प्रमाण",
    "証明|導出|示せ|反例|帰納法で",
    "证明|推导|反例|归纳法|反证法",
)


# Everyday phrases that contain a formal or mathematical word.
FALSE_FRIENDS: dict[str, tuple[str, ...]] = {
    "proof": ("proof of {purchase,address,identity,income,residence,delivery,payment,"
              "ownership,concept,age,insurance,employment,vaccination,funds,citizenship}",),
    "preuve": ("preuve d achat", "preuve de {résidence,domicile,paiement,revenu}"),
    "derive": ("derive from",),
    "integral": ("integral part", "integral to", "integral role", "integral component",
                 "im sinne von"),
    "证明": ("收入证明", "在职证明", "居住证明", "证明书", "出生证明", "证明信", "证明材料"),
    "証明": ("証明書", "身分証明", "証明写真"),
    "积分": ("会员积分", "积分卡", "积分兑换"),
    "matrix": ("the matrix",),
    "prime": ("prime minister", "amazon prime", "prime time", "prime day", "prime rib"),
    "exception": ("the exception of", "exception to the rule"),
    "list": ("shopping list", "to do list", "todo list", "reading list", "checklist",
             "guest list", "wish list", "packing list"),
    "race": ("race car", "horse race", "human race", "arms race", "race day"),
    "plan": ("meal plan",),
    "every": ("every day", "every time", "every week", "every morning", "every evening"),
}


# Theoretical computer science and open problems: hard however short the question.
THEORY: Group = (
    "decidable|undecidable|decidability|halting problem|turing machine{,s}|automata|automaton"
    "|computability|np hard|np complete|complexity class{,es}|pspace|lower bound"
    "|impossibility|impossible to construct",
    "entscheidbar|unentscheidbar|halteproblem|turingmaschine|np schwer|np vollständig",
    "décidable|indécidable|problème de l arrêt|machine de turing|np difficile|np complet",
    "decidible|indecidible|problema de la parada|máquina de turing|np difícil|np completo",
    "decidível|indecidível|problema da parada|máquina de turing|np difícil|np completo",
    "разрешим{ый,а}|неразрешим{ый,а}|проблема останова|машина тьюринга|np трудн{ая,ый}",
    "अनिर्णेय",
    "決定可能|決定不能|停止問題|チューリングマシン|np困難|np完全",
    "可判定|不可判定|停机问题|图灵机|np难|np完全",
)


# Mathematics beyond a single textbook step.
MATH: Group = (
    "theorem{,s}|lemma|corollary|eigenvalue{,s}|eigenvector{,s}|matrix|matrices|determinant"
    "|inequality|polynomial{,s}|calculus|converge{,s}|convergence|expected value|expected number"
    "|variance|standard deviation|bayes|bayesian|combinatorics|permutations|modular arithmetic"
    "|vector{,s}|tensor|hessian|jacobian|fourier|laplace|topology|manifold|homomorphism"
    "|isomorphism|group theory|asymptotic|recurrence"
    "|induction|lagrangian|hamiltonian|stochastic|markov|linear programming|convex|irrational"
    "|infinitely many|countable|uncountable|cardinality|riemann|conjecture|axiom{,s}"
    "|graph theory|linear algebra|p value|confidence interval|monte carlo"
    "|compact|continuous|uniformly|metric space|probability|sensitivity|specificity"
    "|prevalence|maximi{s,z}ed|minimi{s,z}e|optimal|prime{,s}|integral|integrals|derivative"
    "|equation{,s}",
    "theorem|lemma|ableitung|differentialgleichung|eigenwert{,e}|matrix|determinante"
    "|ungleichung|polynom|grenzwert|konvergiert|konvergenz|wahrscheinlichkeit"
    "|erwartungswert|varianz|primzahl{,en}|vektor|induktion|irrational|unendlich viele"
    "|zeitkomplexität|integral|gleichung",
    "théorème|lemme|valeur{,s} propre{,s}|matrice|déterminant|inégalité|polynôme|converge"
    "|convergence|probabilité|espérance|variance|nombre{,s} premier{,s}|vecteur|récurrence"
    "|irrationnel|complexité temporelle|intégrale|dérivée|équation",
    "teorema|lema|autovalor{,es}|matriz|determinante|desigualdad|polinomio|convergencia"
    "|probabilidad|varianza|número primo|números primos|vector|inducción|irracional"
    "|complejidad temporal|integral|derivada|ecuación",
    "teorema|lema|autovalor{,es}|matriz|determinante|desigualdade|polinômio|convergência"
    "|probabilidade|variância|número primo|números primos|vetor|indução|irracional"
    "|complexidade de tempo|integral|derivada|equação",
    "теорем{а,у}|лемма|собственные значения|матриц{а,у}|определитель|неравенство|многочлен"
    "|полином|сходится|сходимость|вероятность|математическое ожидание|дисперсия"
    "|простое число|простых чисел|вектор|индукции|иррациональн{о,ое,ым,ен,ы}"
    "|бесконечно много|временная сложность|интеграл|производная|уравнение",
    "प्रमेय|आव्यूह|मैट्रिक्स|प्रायिकता|अभाज्य|सदिश|समीकरण",
    "定理|補題|固有値|行列|不等式|多項式|極限|収束|確率|期待値|素数|ベクトル|無理数|計算量"
    "|漸化式|積分|微分|方程式",
    "定理|引理|特征值|矩阵|行列式|不等式|多项式|极限|收敛|概率|期望值|方差|素数|质数|向量"
    "|无理数|复杂度|递推|积分|导数|方程",
)


# Depth of domain: system design, algorithms, security, law, medicine, finance, economics,
# science, philosophy.
DOMAIN: Group = (
    "distributed|consensus|raft|paxos|byzantine|microservice{,s}|sharding|partitioning"
    "|replication|eventual consistency|strong consistency|linearizab{le,ility}|cap theorem"
    "|load balanc{er,ing}|high availability|fault toleran{ce,t}|failover|failed over"
    "|split brain|leader election|network partition|quorum|scalab{le,ility}|at scale"
    "|millions of users|million users|rate limiter|message queue|kafka|consumer group"
    "|rebalanc{e,ing}|event sourcing|cqrs|concurrency|concurrent|lock free|wait free|mutex"
    "|atomic|memory model|cache invalidation|idempoten{t,cy}|two phase commit|multi region"
    "|multi tenant|service mesh|backpressure|without downtime|zero downtime|data loss"
    "|losing data|foreign keys|consistent hashing|virtual nodes|bloom filter|crdt"
    "|vector clock|interpreter|parser|garbage collector|allocator|virtual machine"
    "|type checker|closures|thread safe|thread safety|under load|under high load|tcp|udp"
    "|congestion control|handshake|retransmission|packet loss|bgp|red black tree|avl tree"
    "|b tree|skip list|segment tree|persistent data structure|immutable|dynamic programming"
    "|shortest path|max flow|scheduling problem|np hard|heuristic|analytically"
    "|threat model{,ing}|vulnerabilit{y,ies}|exploit{,s}"
    "|attack surface|penetration test|pentest|cve|xss|csrf|sql injection|privilege escalation"
    "|side channel|cryptograph{y,ic}|zero knowledge|zero trust|buffer overflow|timing attack"
    "|key exchange|liability|liable|jurisdiction{,s}|indemnif{y,ication}|indemnity|statute{,s}"
    "|case law|precedent|tort|negligence|breach of contract|fiduciary|gdpr|hipaa|non compete"
    "|enforceab{le,ility}|unenforceable|arbitration|intellectual property"
    "|copyright infringement|antitrust|regulatory|lawful|unlawful|legally|clause{,s}"
    "|differential diagnosis|contraindicat{ion,ions,ed}"
    "|drug interaction{,s}|pharmacokinetic{s,}|comorbidit{y,ies}|prognosis"
    "|pathophysiology|etiology|dosing|dose|doses|diagnosed|prescribed|clinical trial"
    "|mechanism of action|heart failure|discounted cash flow|dcf|valuation|black scholes"
    "|hedging|portfolio|capital gains|capital structure|working capital|monetary policy"
    "|central bank{,s}|financial stability|interest rate{,s}|mortgage|pension"
    "|drawdown|tax rules|macroeconomic{,s}|econometric{,s}|causal effect|causal inference"
    "|estimator|fixed effects|difference in differences|instrumental variable{,s}"
    "|heterogeneous|arbitrage|options pricing|tax implications|quantum|entanglement"
    "|relativity|thermodynamics|entropy|backpropagation|attention mechanism|gradient descent"
    "|neural network{,s}|reinforcement learning|statistical significance|protein folding"
    "|epistemolog{y,ical}|metaphysics|utilitarianism|deontolog{y,ical}|game theory"
    "|nash equilibrium|geopolitic{s,al}",
    "verteilt{es,e,en} system{,e}|verteilten|konsens|skalierbar|skalierbarkeit"
    "|hochverfügbarkeit|ausfallsicherheit|replikation|nebenläufigkeit|sicherheitslücke{,n}"
    "|schwachstelle{,n}|bedrohungsmodell|verschlüsselung|haftung|gerichtsstand"
    "|rechtsprechung|vertragsbruch|dsgvo|differentialdiagnose|kontraindikation"
    "|wechselwirkung{,en}|dosierung|quanten|relativitätstheorie|thermodynamik"
    "|neuronales netz|microservices|ezb|zentralbank|geldpolitik|hypothek|rente"
    "|steuern|optimierungsproblem|planungsproblem|rechtmäßig",
    "système distribué|systèmes distribués|distribué{,s}|consensus|évolutivité"
    "|haute disponibilité|tolérance aux pannes|réplication|vulnérabilité{,s}"
    "|faille{,s}|modèle de menace|chiffrement|cryptographie|responsabilité civile|juridiction"
    "|jurisprudence|rupture de contrat|rgpd|diagnostic différentiel|contre indication{,s}"
    "|interaction{,s} médicamenteuse{,s}|posologie|pronostic|quantique|relativité"
    "|thermodynamique|réseau de neurones|microservices|valorisation|bce"
    "|banque centrale|politique monétaire|hypothèque|retraite|impôts|fiscalité",
    "sistema{,s} distribuido{,s}|distribuido|consenso|escalable|escalabilidad"
    "|alta disponibilidad|tolerancia a fallos|replicación|vulnerabilidad{,es}"
    "|modelo de amenazas|cifrado|criptografía|responsabilidad civil|jurisdicción"
    "|jurisprudencia|incumplimiento de contrato|diagnóstico diferencial"
    "|contraindicaci{ón,ones}|interacci{ón,ones} medicamentosa{,s}|pronóstico|cuántic{a,o}"
    "|relatividad|termodinámica|red neuronal|microservicios|valoración"
    "|banco central|política monetaria|hipoteca|jubilación|impuestos",
    "sistema{,s} distribuído{,s}|distribuído|consenso|escalável|escalabilidade"
    "|alta disponibilidade|tolerância a falhas|replicação|vulnerabilidade{,s}"
    "|modelo de ameaças|criptografia|responsabilidade civil|jurisdição|jurisprudência"
    "|quebra de contrato|lgpd|diagnóstico diferencial|contraindicaç{ão,ões}"
    "|interaç{ão,ões} medicamentosa{,s}|dosagem|prognóstico|quântic{a,o}|relatividade"
    "|termodinâmica|rede neural|microsserviços|banco central|política monetária"
    "|hipoteca|aposentadoria|impostos",
    "распредел{ённая,енная,ённых,енных,ённой,енной,ённую,енную}|консенсус"
    "|масштабируем{ость,ый,ую,ая}|отказоустойчив{ость,ый,ую,ая}|репликация|уязвимост{ь,и}"
    "|модель угроз|шифрование|криптографи{я,и}|юрисдикци{я,и}|судебная практика"
    "|нарушение договора|дифференциальный диагноз|противопоказан{ия,о}|дозировка"
    "|квантов{ый,ая,ых,ое}|относительности|термодинамик{а,и}|нейронн{ая,ой} сет{ь,и}"
    "|микросервис{ы,ов}|многопоточность|конкурентность|центральный банк"
    "|денежно кредитн{ая,ой}|ипотек{а,и,у}|пенси{я,и}|налог{и,ов}",
    "वितरित|स्केलेबल|भेद्यता|एन्क्रिप्शन|क्रिप्टोग्राफी|दायित्व|क्षेत्राधिकार|न्यायशास्त्र|निदान"
    "|खुराक|क्वांटम|सापेक्षता|ऊष्मागतिकी|तंत्रिका नेटवर्क|माइक्रोसर्विस",
    "分散システム|合意形成|スケーラビリティ|スケーラブル|高可用性|耐障害性|冗長化"
    "|レプリケーション|並行性|並列処理|排他制御|脆弱性|脅威モデル|暗号化|法的責任|管轄"
    "|判例|契約違反|鑑別診断|禁忌|相互作用|用量|予後|量子|相対性理論|熱力学"
    "|ニューラルネットワーク|マイクロサービス|一貫性|シャーディング|中央銀行"
    "|金融政策|住宅ローン|年金|税金",
    "分布式|共识|可扩展|高可用|容错|并发|一致性|分片|负载均衡|微服务|漏洞|威胁模型|加密"
    "|密码学|法律责任|管辖|判例|违约|合规|鉴别诊断|禁忌症|相互作用|剂量|预后|量子|相对论"
    "|热力学|神经网络|估值|套利|央行|货币政策|房贷|养老金|竞态|原子操作",
)
