"""Reference RecBole SASRec / BERT4Rec modules, and RecBole's checkpoint layout.

A test reference written for seqrec. It follows RecBole's source (github: RUCAIBox/RecBole)
statement by statement, with the same class, attribute and module names, so `state_dict()`
has exactly RecBole's keys and a checkpoint saved by `save_checkpoint` has the layout of one
saved by RecBole's trainer:

  recbole/model/layers.py          MultiHeadAttention, FeedForward (ACT2FN, erf gelu),
                                   TransformerLayer, TransformerEncoder
  recbole/model/abstract_recommender.py
                                   SequentialRecommender: gather_indexes, get_attention_mask
                                   (causal or bidirectional, padded keys get -10000)
  recbole/model/sequential_recommender/sasrec.py     SASRec
  recbole/model/sequential_recommender/bert4rec.py   three historical layouts:
      BERT4Rec       (>= 1.2)  position_embedding [L, d]; test input: append [MASK], drop the
                               first slot; output_ffn -> GELU -> output_ln; output_bias
      BERT4RecV11    (1.1)     the same input, no output head, no bias
      BERT4RecV10    (<= 1.0)  position_embedding [L+1, d]; [MASK] appended in slot len of
                               L+1 slots and read there
  recbole/trainer/trainer.py       Trainer._save_checkpoint: torch.save({config, epoch,
                                   cur_step, best_valid_score, state_dict, other_parameter,
                                   optimizer}, pickle_protocol=4)
  recbole/config/configurator.py   Config: a plain object whose __dict__ holds the parameter
                                   categories, the config dicts, model, model_class, dataset
                                   and final_config_dict (with a torch.device and enums)

Models take RecBole's (config, dataset) constructor arguments: `config` is a `Config` (or any
mapping) and `dataset` anything with `num(field)`.
"""

import copy
import enum
import math
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as fn


# ---- recbole/model/layers.py ------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    def __init__(self, n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps):
        super(MultiHeadAttention, self).__init__()
        if hidden_size % n_heads != 0:
            raise ValueError(
                "The hidden size (%d) is not a multiple of the number of attention "
                "heads (%d)" % (hidden_size, n_heads)
            )

        self.num_attention_heads = n_heads
        self.attention_head_size = int(hidden_size / n_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size

        self.query = nn.Linear(hidden_size, self.all_head_size)
        self.key = nn.Linear(hidden_size, self.all_head_size)
        self.value = nn.Linear(hidden_size, self.all_head_size)

        self.attn_dropout = nn.Dropout(attn_dropout_prob)

        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, input_tensor, attention_mask):
        mixed_query_layer = self.query(input_tensor)
        mixed_key_layer = self.key(input_tensor)
        mixed_value_layer = self.value(input_tensor)

        query_layer = self.transpose_for_scores(mixed_query_layer)
        key_layer = self.transpose_for_scores(mixed_key_layer)
        value_layer = self.transpose_for_scores(mixed_value_layer)

        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        # [batch_size heads seq_len seq_len] scores + [batch_size 1 1|seq_len seq_len] mask
        attention_scores = attention_scores + attention_mask

        attention_probs = nn.Softmax(dim=-1)(attention_scores)
        attention_probs = self.attn_dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(*new_context_layer_shape)
        hidden_states = self.dense(context_layer)
        hidden_states = self.out_dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)

        return hidden_states


class FeedForward(nn.Module):
    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps):
        super(FeedForward, self).__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.intermediate_act_fn = self.get_hidden_act(hidden_act)

        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def get_hidden_act(self, act):
        ACT2FN = {
            "gelu": self.gelu,
            "relu": fn.relu,
            "swish": self.swish,
            "tanh": torch.tanh,
            "sigmoid": torch.sigmoid,
        }
        return ACT2FN[act]

    def gelu(self, x):
        """The erf form of GELU (not OpenAI GPT's tanh approximation)."""
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def swish(self, x):
        return x * torch.sigmoid(x)

    def forward(self, input_tensor):
        hidden_states = self.dense_1(input_tensor)
        hidden_states = self.intermediate_act_fn(hidden_states)

        hidden_states = self.dense_2(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)

        return hidden_states


class TransformerLayer(nn.Module):
    def __init__(self, n_heads, hidden_size, intermediate_size, hidden_dropout_prob, attn_dropout_prob,
                 hidden_act, layer_norm_eps):
        super(TransformerLayer, self).__init__()
        self.multi_head_attention = MultiHeadAttention(
            n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps
        )
        self.feed_forward = FeedForward(hidden_size, intermediate_size, hidden_dropout_prob, hidden_act,
                                        layer_norm_eps)

    def forward(self, hidden_states, attention_mask):
        attention_output = self.multi_head_attention(hidden_states, attention_mask)
        feedforward_output = self.feed_forward(attention_output)
        return feedforward_output


class TransformerEncoder(nn.Module):
    def __init__(self, n_layers=2, n_heads=2, hidden_size=64, inner_size=256, hidden_dropout_prob=0.5,
                 attn_dropout_prob=0.5, hidden_act="gelu", layer_norm_eps=1e-12):
        super(TransformerEncoder, self).__init__()
        layer = TransformerLayer(
            n_heads, hidden_size, inner_size, hidden_dropout_prob, attn_dropout_prob, hidden_act, layer_norm_eps
        )
        self.layer = nn.ModuleList([copy.deepcopy(layer) for _ in range(n_layers)])

    def forward(self, hidden_states, attention_mask, output_all_encoded_layers=True):
        all_encoder_layers = []
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
            if output_all_encoded_layers:
                all_encoder_layers.append(hidden_states)
        if not output_all_encoded_layers:
            all_encoder_layers.append(hidden_states)
        return all_encoder_layers


# ---- recbole/model/abstract_recommender.py ----------------------------------------------

class AbstractRecommender(nn.Module):
    def other_parameter(self):
        if hasattr(self, "other_parameter_name"):
            return {key: getattr(self, key) for key in self.other_parameter_name}
        return dict()


class SequentialRecommender(AbstractRecommender):
    def __init__(self, config, dataset):
        super(SequentialRecommender, self).__init__()

        # load dataset info
        self.USER_ID = config["USER_ID_FIELD"]
        self.ITEM_ID = config["ITEM_ID_FIELD"]
        self.ITEM_SEQ = self.ITEM_ID + config["LIST_SUFFIX"]
        self.ITEM_SEQ_LEN = config["ITEM_LIST_LENGTH_FIELD"]
        self.POS_ITEM_ID = self.ITEM_ID
        self.NEG_ITEM_ID = config["NEG_PREFIX"] + self.ITEM_ID
        self.max_seq_length = config["MAX_ITEM_LIST_LENGTH"]
        self.n_items = dataset.num(self.ITEM_ID)

        # load parameters info
        self.device = config["device"]

    def gather_indexes(self, output, gather_index):
        """Gathers the vectors at the specific positions over a minibatch"""
        gather_index = gather_index.view(-1, 1, 1).expand(-1, -1, output.shape[-1])
        output_tensor = output.gather(dim=1, index=gather_index)
        return output_tensor.squeeze(1)

    def get_attention_mask(self, item_seq, bidirectional=False):
        """Generate left-to-right uni-directional or bidirectional attention mask for multi-head attention."""
        attention_mask = item_seq != 0
        extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)  # torch.bool
        if not bidirectional:
            extended_attention_mask = torch.tril(
                extended_attention_mask.expand((-1, -1, item_seq.size(-1), -1))
            )
        extended_attention_mask = torch.where(extended_attention_mask, 0.0, -10000.0)
        return extended_attention_mask


class BPRLoss(nn.Module):
    """recbole/model/loss.py"""

    def __init__(self, gamma=1e-10):
        super(BPRLoss, self).__init__()
        self.gamma = gamma

    def forward(self, pos_score, neg_score):
        loss = -torch.log(self.gamma + torch.sigmoid(pos_score - neg_score)).mean()
        return loss


def _init_weights(module, initializer_range):
    """SASRec._init_weights / BERT4Rec._init_weights. Note it overwrites the padding row of
    item_embedding too (padding_idx only freezes its gradient), so row 0 is not zero."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=initializer_range)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


# ---- recbole/model/sequential_recommender/sasrec.py -------------------------------------

class SASRec(SequentialRecommender):
    def __init__(self, config, dataset):
        super(SASRec, self).__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]  # same as embedding_size
        self.inner_size = config["inner_size"]  # the dimensionality in feed-forward layer
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]

        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )

        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError("Make sure 'loss_type' in ['BPR', 'CE']!")

        # parameters initialization
        self.apply(self._init_weights)

    def _init_weights(self, module):
        _init_weights(module, self.initializer_range)

    def forward(self, item_seq, item_seq_len):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        position_ids = position_ids.unsqueeze(0).expand_as(item_seq)
        position_embedding = self.position_embedding(position_ids)

        item_emb = self.item_embedding(item_seq)
        input_emb = item_emb + position_embedding
        input_emb = self.LayerNorm(input_emb)
        input_emb = self.dropout(input_emb)

        extended_attention_mask = self.get_attention_mask(item_seq)

        trm_output = self.trm_encoder(input_emb, extended_attention_mask, output_all_encoded_layers=True)
        output = trm_output[-1]
        output = self.gather_indexes(output, item_seq_len - 1)
        return output  # [B H]

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_items_emb = self.item_embedding(pos_items)
            neg_items_emb = self.item_embedding(neg_items)
            pos_score = torch.sum(seq_output * pos_items_emb, dim=-1)  # [B]
            neg_score = torch.sum(seq_output * neg_items_emb, dim=-1)  # [B]
            loss = self.loss_fct(pos_score, neg_score)
            return loss
        else:  # self.loss_type = 'CE'
            test_item_emb = self.item_embedding.weight
            logits = torch.matmul(seq_output, test_item_emb.transpose(0, 1))
            loss = self.loss_fct(logits, pos_items)
            return loss

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        test_items_emb = self.item_embedding.weight
        scores = torch.matmul(seq_output, test_items_emb.transpose(0, 1))  # [B n_items]
        return scores


# ---- recbole/model/sequential_recommender/bert4rec.py -----------------------------------

class _BERT4RecBase(SequentialRecommender):
    """What the three layouts share: constructor arguments, _init_weights, calculate_loss's
    masked-position gather (the CE branch)."""

    def _read_config(self, config):
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]  # same as embedding_size
        self.inner_size = config["inner_size"]  # the dimensionality in feed-forward layer
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]

        self.mask_ratio = config["mask_ratio"]

        self.MASK_ITEM_SEQ = config["MASK_ITEM_SEQ"]
        self.POS_ITEMS = config["POS_ITEMS"]
        self.NEG_ITEMS = config["NEG_ITEMS"]
        self.MASK_INDEX = config["MASK_INDEX"]

        self.loss_type = config["loss_type"]
        self.initializer_range = config["initializer_range"]

        # load dataset info
        self.mask_token = self.n_items
        self.mask_item_length = int(self.mask_ratio * self.max_seq_length)

    def _make_encoder(self):
        return TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )

    def _init_weights(self, module):
        _init_weights(module, self.initializer_range)

    def multi_hot_embed(self, masked_index, max_length):
        masked_index = masked_index.view(-1)
        multi_hot = torch.zeros(masked_index.size(0), max_length, device=masked_index.device)
        multi_hot[torch.arange(masked_index.size(0)), masked_index] = 1
        return multi_hot

    def calculate_loss(self, interaction):
        masked_item_seq = interaction[self.MASK_ITEM_SEQ]
        pos_items = interaction[self.POS_ITEMS]
        masked_index = interaction[self.MASK_INDEX]

        seq_output = self.forward(masked_item_seq)
        pred_index_map = self.multi_hot_embed(masked_index, masked_item_seq.size(-1))  # [B*mask_len max_len]
        pred_index_map = pred_index_map.view(masked_index.size(0), masked_index.size(1), -1)
        seq_output = torch.bmm(pred_index_map, seq_output)  # [B mask_len H]

        loss_fct = nn.CrossEntropyLoss(reduction="none")
        test_item_emb = self.item_embedding.weight[: self.n_items]  # [item_num H]
        logits = torch.matmul(seq_output, test_item_emb.transpose(0, 1))  # [B mask_len item_num]
        if hasattr(self, "output_bias"):
            logits = logits + self.output_bias
        targets = (masked_index > 0).float().view(-1)  # [B*mask_len]
        loss = torch.sum(
            loss_fct(logits.view(-1, test_item_emb.size(0)), pos_items.view(-1)) * targets
        ) / torch.sum(targets)
        return loss


class BERT4Rec(_BERT4RecBase):
    """RecBole >= 1.2."""

    def __init__(self, config, dataset):
        super(BERT4Rec, self).__init__(config, dataset)
        self._read_config(config)

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)  # mask token add 1
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)  # add mask_token at the last
        self.trm_encoder = self._make_encoder()

        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.output_ffn = nn.Linear(self.hidden_size, self.hidden_size)
        self.output_gelu = nn.GELU()
        self.output_ln = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))

        # we only need compute the loss at the masked position
        try:
            assert self.loss_type in ["BPR", "CE"]
        except AssertionError:
            raise AssertionError("Make sure 'loss_type' in ['BPR', 'CE']!")

        # parameters initialization
        self.apply(self._init_weights)

    def reconstruct_test_data(self, item_seq, item_seq_len):
        """Add mask token at the last position according to the lengths of item_seq"""
        padding = torch.zeros(item_seq.size(0), dtype=torch.long, device=item_seq.device)  # [B]
        item_seq = torch.cat((item_seq, padding.unsqueeze(-1)), dim=-1)  # [B max_len+1]
        for batch_id, last_position in enumerate(item_seq_len):
            item_seq[batch_id][last_position] = self.mask_token
        item_seq = item_seq[:, 1:]
        return item_seq

    def forward(self, item_seq):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        position_ids = position_ids.unsqueeze(0).expand_as(item_seq)
        position_embedding = self.position_embedding(position_ids)
        item_emb = self.item_embedding(item_seq)
        input_emb = item_emb + position_embedding
        input_emb = self.LayerNorm(input_emb)
        input_emb = self.dropout(input_emb)
        extended_attention_mask = self.get_attention_mask(item_seq, bidirectional=True)
        trm_output = self.trm_encoder(input_emb, extended_attention_mask, output_all_encoded_layers=True)
        ffn_output = self.output_ffn(trm_output[-1])
        ffn_output = self.output_gelu(ffn_output)
        output = self.output_ln(ffn_output)
        return output  # [B L H]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        item_seq = self.reconstruct_test_data(item_seq, item_seq_len)
        seq_output = self.forward(item_seq)
        seq_output = self.gather_indexes(seq_output, item_seq_len - 1)  # [B H]
        test_items_emb = self.item_embedding.weight[: self.n_items]  # delete masked token
        scores = torch.matmul(seq_output, test_items_emb.transpose(0, 1)) + self.output_bias  # [B, item_num]
        return scores


class BERT4RecV11(_BERT4RecBase):
    """RecBole 1.1: the 1.2 input (append [MASK], drop the first slot) without output head or bias."""

    def __init__(self, config, dataset):
        super(BERT4RecV11, self).__init__(config, dataset)
        self._read_config(config)

        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)  # mask token add 1
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)  # add mask_token at the last
        self.trm_encoder = self._make_encoder()

        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        try:
            assert self.loss_type in ["BPR", "CE"]
        except AssertionError:
            raise AssertionError("Make sure 'loss_type' in ['BPR', 'CE']!")

        self.apply(self._init_weights)

    def reconstruct_test_data(self, item_seq, item_seq_len):
        """Add mask token at the last position according to the lengths of item_seq"""
        padding = torch.zeros(item_seq.size(0), dtype=torch.long, device=item_seq.device)  # [B]
        item_seq = torch.cat((item_seq, padding.unsqueeze(-1)), dim=-1)  # [B max_len+1]
        for batch_id, last_position in enumerate(item_seq_len):
            item_seq[batch_id][last_position] = self.mask_token
        item_seq = item_seq[:, 1:]
        return item_seq

    def forward(self, item_seq):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        position_ids = position_ids.unsqueeze(0).expand_as(item_seq)
        position_embedding = self.position_embedding(position_ids)
        item_emb = self.item_embedding(item_seq)
        input_emb = item_emb + position_embedding
        input_emb = self.LayerNorm(input_emb)
        input_emb = self.dropout(input_emb)
        extended_attention_mask = self.get_attention_mask(item_seq, bidirectional=True)
        trm_output = self.trm_encoder(input_emb, extended_attention_mask, output_all_encoded_layers=True)
        output = trm_output[-1]
        return output  # [B L H]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        item_seq = self.reconstruct_test_data(item_seq, item_seq_len)
        seq_output = self.forward(item_seq)
        seq_output = self.gather_indexes(seq_output, item_seq_len - 1)  # [B H]
        test_items_emb = self.item_embedding.weight[: self.n_items]  # delete masked token
        scores = torch.matmul(seq_output, test_items_emb.transpose(0, 1))  # [B, item_num]
        return scores


class BERT4RecV10(_BERT4RecBase):
    """RecBole <= 1.0: L+1 slots, [MASK] at slot len, read out there."""

    def __init__(self, config, dataset):
        super(BERT4RecV10, self).__init__(config, dataset)
        self._read_config(config)

        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)  # mask token add 1
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, self.hidden_size)  # add mask_token at the last
        self.trm_encoder = self._make_encoder()

        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        try:
            assert self.loss_type in ["BPR", "CE"]
        except AssertionError:
            raise AssertionError("Make sure 'loss_type' in ['BPR', 'CE']!")

        self.apply(self._init_weights)

    def get_attention_mask(self, item_seq, bidirectional=True):
        """Generate bidirectional attention mask for multi-head attention (the 1.0 model's own)."""
        attention_mask = (item_seq > 0).long()
        extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)  # torch.int64
        # bidirectional mask
        extended_attention_mask = extended_attention_mask.to(dtype=next(self.parameters()).dtype)  # fp16 compatibility
        extended_attention_mask = (1.0 - extended_attention_mask) * -10000.0
        return extended_attention_mask

    def reconstruct_test_data(self, item_seq, item_seq_len):
        """Add mask token at the last position according to the lengths of item_seq"""
        padding = torch.zeros(item_seq.size(0), dtype=torch.long, device=item_seq.device)  # [B]
        item_seq = torch.cat((item_seq, padding.unsqueeze(-1)), dim=-1)  # [B max_len+1]
        for batch_id, last_position in enumerate(item_seq_len):
            item_seq[batch_id][last_position] = self.mask_token
        return item_seq

    def forward(self, item_seq):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        position_ids = position_ids.unsqueeze(0).expand_as(item_seq)
        position_embedding = self.position_embedding(position_ids)
        item_emb = self.item_embedding(item_seq)
        input_emb = item_emb + position_embedding
        input_emb = self.LayerNorm(input_emb)
        input_emb = self.dropout(input_emb)
        extended_attention_mask = self.get_attention_mask(item_seq)
        trm_output = self.trm_encoder(input_emb, extended_attention_mask, output_all_encoded_layers=True)
        output = trm_output[-1]
        return output  # [B L H]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        item_seq = self.reconstruct_test_data(item_seq, item_seq_len)
        seq_output = self.forward(item_seq)
        seq_output = self.gather_indexes(seq_output, item_seq_len)  # [B H]
        test_items_emb = self.item_embedding.weight[: self.n_items]  # delete masked token
        scores = torch.matmul(seq_output, test_items_emb.transpose(0, 1))  # [B, item_num]
        return scores


# ---- RecBole's Config, enums and the trainer's checkpoint -------------------------------

def _fake_module(name):
    """Registers `name` (and its parents) in sys.modules so pickle can name classes there."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[name]


def _place(cls, module_name, qualname=None):
    module = _fake_module(module_name)
    cls.__module__ = module_name
    cls.__qualname__ = qualname or cls.__name__
    setattr(module, cls.__qualname__, cls)
    return cls


class ModelType(enum.Enum):
    """recbole/utils/enum_type.py"""
    GENERAL = 1
    SEQUENTIAL = 2
    CONTEXT = 3
    KNOWLEDGE = 4
    TRADITIONAL = 5
    DECISIONTREE = 6


class InputType(enum.Enum):
    POINTWISE = 1
    PAIRWISE = 2
    LISTWISE = 3


class EvaluatorType(enum.Enum):
    RANKING = 1
    VALUE = 2


class Config(object):
    """Stands for recbole.config.configurator.Config: only its pickled state matters (a plain
    object, pickled by its __dict__). Item access reads final_config_dict, as RecBole's does."""

    def __init__(self, model, model_class, dataset, final_config_dict, external_config_dict):
        self.compatibility_settings_applied = True
        self.parameters = {
            "General": ["gpu_id", "use_gpu", "seed", "reproducibility", "state", "data_path", "checkpoint_dir"],
            "Training": ["epochs", "train_batch_size", "learner", "learning_rate", "train_neg_sample_args"],
            "Evaluation": ["eval_args", "metrics", "topk", "valid_metric", "eval_batch_size"],
            "Dataset": ["field_separator", "USER_ID_FIELD", "ITEM_ID_FIELD", "MAX_ITEM_LIST_LENGTH"],
        }
        self.file_config_dict = {}
        self.variable_config_dict = dict(external_config_dict)
        self.cmd_config_dict = {}
        self.external_config_dict = dict(external_config_dict)
        self.model = model
        self.model_class = model_class
        self.dataset = dataset
        self.internal_config_dict = {k: v for k, v in final_config_dict.items() if k not in external_config_dict}
        self.final_config_dict = final_config_dict

    def __getitem__(self, item):
        if item in self.final_config_dict:
            return self.final_config_dict[item]
        return None

    def __contains__(self, key):
        return key in self.final_config_dict


class Dataset:
    """Anything with RecBole's dataset.num(field): the item count includes [PAD]."""

    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


# Every class a checkpoint names lives under RecBole's module names, as in a real one.
_place(ModelType, "recbole.utils.enum_type")
_place(InputType, "recbole.utils.enum_type")
_place(EvaluatorType, "recbole.utils.enum_type")
_place(Config, "recbole.config.configurator")
_place(SASRec, "recbole.model.sequential_recommender.sasrec")
for _cls in (BERT4Rec, BERT4RecV11, BERT4RecV10):
    # Each layout is "BERT4Rec" of its RecBole version; pickle needs distinct names here.
    _place(_cls, "recbole.model.sequential_recommender.bert4rec")

LAYOUTS = {"sasrec": SASRec, "bert4rec": BERT4Rec, "bert4rec_v11": BERT4RecV11, "bert4rec_v10": BERT4RecV10}


def make_config(family, n_heads, hidden_size, inner_size, n_layers, max_len, hidden_act, loss_type,
                layer_norm_eps=1e-12, dataset="ml-100k"):
    """A Config as RecBole builds it for `family` (its model_class the reference class)."""
    model = "SASRec" if family == "sasrec" else "BERT4Rec"
    external = {"n_heads": n_heads, "hidden_size": hidden_size, "inner_size": inner_size, "n_layers": n_layers,
                "hidden_act": hidden_act, "loss_type": loss_type, "MAX_ITEM_LIST_LENGTH": max_len}
    final = {
        # overall.yaml (a selection)
        "gpu_id": "0", "use_gpu": True, "seed": 2020, "state": "INFO", "reproducibility": True,
        "data_path": "dataset/" + dataset, "checkpoint_dir": "saved", "show_progress": True,
        "save_dataset": False, "save_dataloaders": False,
        "epochs": 300, "train_batch_size": 2048, "learner": "adam", "learning_rate": 0.001,
        "train_neg_sample_args": {"distribution": "none", "sample_num": "none", "alpha": "none",
                                  "dynamic": False, "candidate_num": 0},
        "eval_step": 1, "stopping_step": 10, "clip_grad_norm": None, "weight_decay": 0.0,
        "loss_decimal_place": 4, "require_pow": False, "enable_amp": False, "enable_scaler": False,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": {"valid": "full", "test": "full"}},
        "repeatable": True, "metrics": ["Recall", "MRR", "NDCG", "Hit", "Precision"], "topk": [10],
        "valid_metric": "MRR@10", "valid_metric_bigger": True, "eval_batch_size": 4096,
        "metric_decimal_place": 4,
        # dataset fields
        "field_separator": "\t", "seq_separator": " ", "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "RATING_FIELD": "rating", "TIME_FIELD": "timestamp", "seq_len": None, "LABEL_FIELD": "label",
        "threshold": None, "NEG_PREFIX": "neg_", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "unload_col": None, "unused_col": None, "additional_feat_suffix": None, "rm_dup_inter": None,
        "val_interval": None, "filter_inter_by_user_or_item": True,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "alias_of_user_id": None, "alias_of_item_id": None, "alias_of_entity_id": None,
        "alias_of_relation_id": None, "preload_weight": None, "normalize_field": None, "normalize_all": None,
        "ITEM_LIST_LENGTH_FIELD": "item_length", "LIST_SUFFIX": "_list", "MAX_ITEM_LIST_LENGTH": max_len,
        "POSITION_FIELD": "position_id", "HEAD_ENTITY_ID_FIELD": "head_id", "TAIL_ENTITY_ID_FIELD": "tail_id",
        "RELATION_ID_FIELD": "relation_id", "ENTITY_ID_FIELD": "entity_id", "benchmark_filename": None,
        # the model's yaml
        "n_layers": n_layers, "n_heads": n_heads, "hidden_size": hidden_size, "inner_size": inner_size,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": hidden_act,
        "layer_norm_eps": layer_norm_eps, "initializer_range": 0.02, "loss_type": loss_type,
        # set by Config itself
        "MODEL_TYPE": ModelType.SEQUENTIAL, "dataset": dataset, "model": model,
        "MODEL_INPUT_TYPE": InputType.POINTWISE if loss_type == "CE" else InputType.PAIRWISE,
        "eval_type": EvaluatorType.RANKING, "device": torch.device("cpu"),
        "eval_neg_sample_args": {"distribution": "uniform", "sample_num": "none"},
        "local_rank": 0, "single_spec": True, "valid_neg_sample_args": {"distribution": "uniform",
                                                                          "sample_num": "none"},
        "test_neg_sample_args": {"distribution": "uniform", "sample_num": "none"},
    }
    if family != "sasrec":
        final.update({"mask_ratio": 0.2, "ft_ratio": 0.5, "MASK_ITEM_SEQ": "Mask_item_id_list",
                      "POS_ITEMS": "Pos_item_id", "NEG_ITEMS": "Neg_item_id", "MASK_INDEX": "MASK_INDEX"})
    return Config(model, LAYOUTS[family], dataset, final, external)


def build_model(family, config, n_items):
    """The reference model of `family` ("sasrec", "bert4rec", "bert4rec_v11", "bert4rec_v10");
    n_items counts RecBole's item ids including [PAD]."""
    return LAYOUTS[family](config, Dataset(n_items))


def full_sort_scores(model, history, max_len):
    """RecBole's full_sort_predict for one user: the most recent max_len items, right padded."""
    window = list(history)[-max_len:]
    item_seq = torch.zeros(1, max_len, dtype=torch.long)
    item_seq[0, : len(window)] = torch.tensor(window, dtype=torch.long)
    interaction = {model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: torch.tensor([len(window)])}
    with torch.no_grad():
        return model.full_sort_predict(interaction)[0]


def save_checkpoint(path, config, model, optimizer, epoch=7, cur_step=84, best_valid_score=0.2315):
    """Trainer._save_checkpoint."""
    state = {
        "config": config,
        "epoch": epoch,
        "cur_step": cur_step,
        "best_valid_score": best_valid_score,
        "state_dict": model.state_dict(),
        "other_parameter": model.other_parameter(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(state, path, pickle_protocol=4)
